"""How the model runs (not what it computes): compute dtype, attention backend, remat, unroll."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from qwen25vl_jax.model.attention import Backend


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """dtype: compute dtype (parameters are cast to it; rope, softmax, norm statistics stay
    float32). backend: attention kernel. remat: policy name (`remat.POLICIES`) for the scanned
    layer bodies. unroll: unroll the layer scans (exact XLA cost analysis; longer compiles)."""

    dtype: jnp.dtype = jnp.float32
    backend: Backend | str = Backend.XLA
    remat: str = "none"
    unroll: bool = False
