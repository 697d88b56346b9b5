"""The 2x2 patch merger: ln_q -> group 4 patches -> Linear -> exact GELU -> Linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen25vl_jax.config import VisionConfig
from qwen25vl_jax.model.layers import param, rms_norm


class PatchMerger(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        d, m = cfg.hidden_size, cfg.hidden_size * cfg.merge_unit
        p = lambda shape, names, init="normal": param(
            rngs, shape, names, dtype=param_dtype, init=init
        )
        self.ln_q = p((d,), ("vit_embed",), "ones")
        self.fc1_kernel = p((m, m), (None, "merger_mlp"))
        self.fc1_bias = p((m,), ("merger_mlp",), "zeros")
        self.fc2_kernel = p((m, cfg.out_hidden_size), ("merger_mlp", "embed"))
        self.fc2_bias = p((cfg.out_hidden_size,), ("embed",), "zeros")

    def __call__(self, x: jax.Array, *, dtype) -> jax.Array:
        """x: [B, N, hidden] (merge units = 4 consecutive patches) -> [B, N / 4, out_hidden]."""
        b, n, d = x.shape
        c = lambda a: a[...].astype(dtype)
        y = rms_norm(x, c(self.ln_q), self.cfg.rms_norm_eps)
        y = y.reshape(b, n // self.cfg.merge_unit, d * self.cfg.merge_unit)
        y = jax.nn.gelu(jnp.einsum("BUM,MF->BUF", y, c(self.fc1_kernel)) + c(self.fc1_bias), False)
        return jnp.einsum("BUF,FO->BUO", y, c(self.fc2_kernel)) + c(self.fc2_bias)
