"""Rotary position embeddings: the ViT's 2-D rope and the decoder's 3-D multimodal rope.

All tables are computed in float32 whatever the compute dtype (bf16 angles lose positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def inv_freq(dim: int, theta: float) -> jax.Array:
    """float32[dim // 2]: theta ** (-2i / dim)."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, N, H]; cos, sin: float32 [B, T, H] -> x rotated, in x's dtype (maths in f32)."""
    x32 = x.astype(jnp.float32)
    out = x32 * cos[:, :, None] + rotate_half(x32) * sin[:, :, None]
    return out.astype(x.dtype)


def _cos_sin(angles: jax.Array) -> tuple[jax.Array, jax.Array]:
    full = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(full), jnp.sin(full)


def vision_rope(positions: jax.Array, *, head_dim: int, theta: float):
    """The ViT's axial 2-D rope.

    positions: int [B, N, 2] (row, column of each patch); returns cos, sin float32 [B, N, head_dim]
    laid out as the reference: [h-angles, w-angles, h-angles, w-angles], head_dim // 4 each.
    """
    freqs = inv_freq(head_dim // 2, theta)  # [head_dim // 4]
    ang = positions.astype(jnp.float32)[..., None] * freqs  # [B, N, 2, head_dim // 4]
    return _cos_sin(ang.reshape(*ang.shape[:-2], -1))


def mrope(positions: jax.Array, *, head_dim: int, theta: float, sections: Sequence[int]):
    """The decoder's multimodal rope.

    positions: int [3, B, L] (temporal, height, width); frequency chunk i of `sections` takes its
    angle from axis i % 3. Returns cos, sin float32 [B, L, head_dim].
    """
    ang = positions.astype(jnp.float32)[..., None] * inv_freq(head_dim, theta)  # [3, B, L, H/2]
    bounds = np.cumsum([0, *sections]).tolist()
    chunks = [ang[i % 3, ..., bounds[i] : bounds[i + 1]] for i in range(len(sections))]
    return _cos_sin(jnp.concatenate(chunks, axis=-1))
