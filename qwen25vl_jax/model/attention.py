"""Scaled dot-product attention behind one backend switch.

`xla`: plain einsums, softmax in float32 (any platform; the parity tests pin it).
`cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPUs, bf16/fp16).
TPU splash attention plugs in here as a third branch without touching the callers.
"""

from __future__ import annotations

import enum

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite: a fully masked (pad) row gives a uniform average instead of NaN


class Backend(enum.StrEnum):
    XLA = "xla"
    CUDNN = "cudnn"


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    scale: float,
    backend: Backend | str = Backend.XLA,
) -> jax.Array:
    """Grouped-query attention.

    q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0; mask: bool [B, T, S] (True = attend).
    Returns [B, T, N, H] in q's dtype.
    """
    backend = Backend(backend)
    b, t, n, h = q.shape
    kh = k.shape[2]
    if backend == Backend.CUDNN:
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn"
        )
    # heads-major layout: both einsums become plain batched matmuls over (B, K); with the
    # sequence-major layout XLA CPU inserts transposes around them (2x slower, measured)
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
    logits = jnp.einsum("BKGTH,BKSH->BKGTS", qg, k.transpose(0, 2, 1, 3),
                        preferred_element_type=jnp.float32)  # fmt: skip
    logits = jnp.where(mask[:, None, None], logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v.transpose(0, 2, 1, 3))  # [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def segment_mask(q_segments: jax.Array, k_segments: jax.Array, *, causal: bool) -> jax.Array:
    """bool [B, T, S]: same non-zero segment (0 = padding), and key <= query when causal.

    q_segments: int [B, T]; k_segments: int [B, S]; causal assumes queries are the last T keys.
    """
    m = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] > 0)
    if causal:
        t, s = q_segments.shape[1], k_segments.shape[1]
        m &= jnp.arange(t)[:, None] + (s - t) >= jnp.arange(s)[None, :]
    return m
