"""Padding a self-attention call to a multiple of a kernel's block size (segment 0 = pad)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pad_to_blocks(block: int, *arrays: jax.Array) -> tuple[int, list[jax.Array]]:
    """Pads axis 1 of every array (q, k, v [B, L, ., H]; segments [B, L]) with zeros up to a
    multiple of `block`. Returns (padded length, arrays). Padded slots get segment 0, so no real
    query attends to them; the caller slices the output back to L."""
    length = arrays[0].shape[1]
    padded = -(-length // block) * block
    if padded == length:
        return length, list(arrays)
    pad = lambda a: jnp.pad(a, [(0, 0), (0, padded - length)] + [(0, 0)] * (a.ndim - 2))
    return padded, [pad(a) for a in arrays]


def needs_interpret(platform: str) -> bool:
    """True when the kernel must run in Pallas interpret mode (not on its own platform)."""
    return jax.default_backend() != platform
