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

    def __post_init__(self):
        # one spelling per setting ("bfloat16" and jnp.bfloat16 alike), so equal options hash
        # alike as a static jit argument and a config file can name them
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "backend", Backend(self.backend))
