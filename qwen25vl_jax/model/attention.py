"""Scaled dot-product attention from segment ids, behind one backend switch.

Every attention in the model is one call: queries and keys carry *segment ids* (0 = padding,
1, 2, ... = packed samples, or one per image / video frame in the ViT's full blocks) and a
causal flag; a query attends to the keys of its own non-zero segment (and, when causal, at or
before its own slot). No caller builds a mask. Each backend builds what it needs:

`xla`: einsums with float32 logits and softmax under a boolean [B, T, S] mask built here (any
    platform; the parity reference and the CPU default).
`cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPUs, bf16/fp16).
    Its public API has no segment ids, so this backend builds the same boolean mask as `xla`
    and hands it to cuDNN: it *does* materialise [B, 1, T, S] (a warning says so at trace
    time). Use it for short rows; packed long rows want `pallas_gpu`.
`pallas_gpu`: our Pallas/Triton flash kernel with segment ids and GQA (`kernels/gpu_flash.py`);
    never materialises [T, S]. Interpreted (slowly) off GPUs, which is how the CPU tests run it.
`splash`: TPU splash attention with segment ids and a causal mask (`kernels/tpu_splash.py`);
    never materialises [T, S]. Interpreted off TPUs.

Query rows of segment 0 (padding) have no key to attend to: `xla` and `cudnn` return the mean
of the values there (the finite mask constant), the kernels return zeros. Nothing reads them.
A call whose queries are not the keys themselves (T != S: a decode step against the cache) is
linear in S, and every backend computes it with the `xla` maths.

Context parallelism: when the ambient mesh splits the sequence over a `context` axis of c > 1
devices (and T == S, divisible by c), each device keeps its T / c queries and meets every key
block through `context_attention.py`: a ring (`context="ring"`) or an all-gather of the keys
and values (`"all_gather"`), both with `xla` blocks whatever the backend. A caller whose T axis
is not the split sequence (the ViT's windows) passes `context=None`.
"""

from __future__ import annotations

import enum
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from qwen25vl_jax.sharding import logical_to_spec

NEG_INF = -1e30  # the one mask constant: finite, so a row with no key averages instead of NaN


class Backend(enum.StrEnum):
    XLA = "xla"
    CUDNN = "cudnn"
    PALLAS_GPU = "pallas_gpu"
    SPLASH = "splash"


class ContextImpl(enum.StrEnum):
    """How queries meet the keys of other `context` shards (`context_attention.py`)."""

    RING = "ring"
    ALL_GATHER = "all_gather"


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segments: jax.Array,
    kv_segments: jax.Array,
    causal: bool,
    scale: float,
    q_offset: int | jax.Array | None = None,
    kv_heads_major: bool = False,
    backend: Backend | str = Backend.XLA,
    context: ContextImpl | str | None = ContextImpl.RING,
) -> jax.Array:
    """Grouped-query attention of q [B, T, N, H] over k, v [B, S, K, H] (N % K == 0).

    q_segments: int [B, T]; kv_segments: int [B, S] (0 = padding: never attended to).
    causal: a query at slot `q_offset + t` attends to key slots <= it; q_offset: int or traced
    int32[] (default S - T: the queries are the last T keys). kv_heads_major: k, v are laid
    out [B, K, S, H] (the KV cache's layout). context: how to attend across the ambient mesh's
    `context` axis when it splits T (None: T is not the split sequence, e.g. ViT windows).
    Returns [B, T, N, H] in q's dtype.
    """
    backend = Backend(backend)
    t, s = q.shape[1], k.shape[2 if kv_heads_major else 1]
    if context is not None and t == s and not kv_heads_major and q_offset is None:
        from qwen25vl_jax.model import context_attention as ca  # imports this module
        from qwen25vl_jax.sharding import context_size

        c = context_size()
        if c > 1 and t % c == 0:
            return ca.context_attention(
                q,
                k,
                v,
                q_segments=q_segments,
                kv_segments=kv_segments,
                causal=causal,
                scale=scale,
                impl=ContextImpl(context),
            )
    if backend in (Backend.PALLAS_GPU, Backend.SPLASH) and t == s and not kv_heads_major:
        # imported here: the kernel modules import NEG_INF from this one
        if backend == Backend.PALLAS_GPU:
            from qwen25vl_jax.model.kernels.gpu_flash import flash_attention
        else:
            from qwen25vl_jax.model.kernels.tpu_splash import flash_attention

        def kernel(q, k, v, q_seg, kv_seg):
            return flash_attention(
                q, k, v, q_segments=q_seg, kv_segments=kv_seg, causal=causal, scale=scale
            )

        # XLA cannot split a kernel call: without shard_map it would gather every row and head
        # onto each device around it. Rows of a call that is not the `context`-split sequence
        # (ViT windows) are split over `context` too.
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1:
            return kernel(q, k, v, q_segments, kv_segments)
        qkv, seg = shard_specs(q, k, mesh, rows_over_context=context is None)
        specs = dict(in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv)
        fn = jax.shard_map(kernel, mesh=mesh, check_vma=False, **specs)  # pallas: no vma
        return fn(q, k, v, q_segments, kv_segments)
    mask = segment_mask(q_segments, kv_segments, causal=causal, q_offset=q_offset)
    if backend == Backend.CUDNN and not kv_heads_major:
        logging.warning("cudnn attention: a [B, 1, %d, %d] mask is built from segment ids", t, s)
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn"
        )
    if not kv_heads_major:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return masked_attention(q, k, v, mask, scale=scale)


def shard_specs(
    q: jax.Array, k: jax.Array, mesh, *, length: str | None = None, rows_over_context=False
) -> tuple[PartitionSpec, PartitionSpec]:
    """(q/k/v spec, segment-id spec) of a per-shard attention over q [B, T, N, H], k [B, T, K,
    H]: rows over the mesh's batch axes (and `context` when `rows_over_context`), T over
    `length` (a mesh axis or None), heads over `tensor` when both N and K divide (each shard
    keeps whole query groups); an axis that does not divide its dimension is left out."""
    b, n, kh = q.shape[0], q.shape[2], k.shape[2]
    rows = logical_to_spec(("batch",), (b,), mesh)[0]
    rows = () if rows is None else (rows,) if isinstance(rows, str) else tuple(rows)
    c = dict(mesh.shape).get("context", 1)
    if rows_over_context and c > 1 and b % (c * int(np.prod([mesh.shape[a] for a in rows]))) == 0:
        rows += ("context",)
    rows = rows[0] if len(rows) == 1 else (rows or None)
    heads = logical_to_spec(("act_heads",), (n,), mesh)[0]
    heads = heads if heads == logical_to_spec(("act_heads",), (kh,), mesh)[0] else None
    return PartitionSpec(rows, length, heads, None), PartitionSpec(rows, length)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float):
    """The `xla` maths. q: [B, T, N, H]; k, v: heads-major [B, K, S, H]; mask: bool [B, T, S].

    Heads-major layout: both einsums are plain batched matmuls over (B, K); with the
    sequence-major layout XLA CPU inserts transposes around them (2x slower, measured).
    """
    logits = masked_logits(group_queries(q, k.shape[1], scale), k, mask)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v)  # [B, K, G, T, H]
    return ungroup_heads(out).astype(q.dtype)


def group_queries(q: jax.Array, kv_heads: int, scale: float) -> jax.Array:
    """Scaled queries q [B, T, N, H] grouped by their key/value head: [B, K, G, T, H]."""
    b, t, n, h = q.shape
    qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, n // kv_heads, h)
    return qg.transpose(0, 2, 3, 1, 4)


def ungroup_heads(out: jax.Array) -> jax.Array:
    """[B, K, G, T, H] -> [B, T, N = K * G, H] (inverse of `group_queries`' layout)."""
    b, kh, g, t, h = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, kh * g, h)


def masked_logits(qg: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [B, K, G, T, S] logits of grouped queries qg [B, K, G, T, H] against heads-major
    keys k [B, K, S, H]; NEG_INF where mask (bool [B, T, S]) is False."""
    logits = jnp.einsum("BKGTH,BKSH->BKGTS", qg, k, preferred_element_type=jnp.float32)
    return jnp.where(mask[:, None, None], logits, NEG_INF)


def segment_mask(q_segments, kv_segments, *, causal: bool, q_offset=None) -> jax.Array:
    """bool [B, T, S]: same non-zero segment, and key slot <= query slot when causal.

    q_segments: int [B, T]; kv_segments: int [B, S]; q_offset: the first query's slot
    (default S - T).
    """
    m = (q_segments[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] > 0)
    if causal:
        t, s = q_segments.shape[1], kv_segments.shape[1]
        offset = s - t if q_offset is None else q_offset
        m &= jnp.arange(t)[:, None] + offset >= jnp.arange(s)[None, :]
    return m
