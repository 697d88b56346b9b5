"""Compiled cost of one ViT block (XLA's cost analysis), to show windowed layers are linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen25vl_jax.config import VisionConfig
from qwen25vl_jax.model.vision import VisionBlocks, vision_block


def vision_block_flops(cfg: VisionConfig, num_patches: int, *, full: bool) -> float:
    """FLOPs XLA counts for one block over one row of `num_patches` slots (all one segment)."""
    one = VisionConfig(**{**cfg.__dict__, "depth": 1, "fullatt_block_indexes": ()})
    blocks = nnx.eval_shape(lambda: VisionBlocks(one, rngs=nnx.Rngs(0)))
    params = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), nnx.to_pure_dict(nnx.state(blocks))
    )
    shape = lambda *s, dt=jnp.float32: jax.ShapeDtypeStruct(s, dt)  # noqa: E731
    args = (
        params,
        shape(1, num_patches, cfg.hidden_size),
        shape(1, num_patches, cfg.head_dim),
        shape(1, num_patches, cfg.head_dim),
        shape(1, num_patches, dt=jnp.int32),
    )
    fn = lambda p, x, c, s, seg: vision_block(p, x, c, s, seg, full=full, cfg=cfg, backend="xla")  # noqa: E731
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])
