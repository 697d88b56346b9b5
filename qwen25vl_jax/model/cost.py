"""The model's cost: analytic forward FLOPs (what MFU and the packer's row balancing count) and
the compiled cost of one ViT block (XLA's cost analysis, which shows window blocks are linear).

Analytic FLOPs are counted as MaxText counts the LLM (2 x matmul MACs, causal attention halved)
plus the ViT and merger it leaves out, on *real* tokens and patches: window blocks are linear
in patches, full blocks quadratic per image / video frame, LLM attention quadratic per packed
sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen25vl_jax.config import ModelConfig, VisionConfig
from qwen25vl_jax.model.vision import VisionBlocks, vision_block


def forward_flops(
    cfg: ModelConfig, *, patches: float, frames_sq: float, tokens: float, samples_sq: float
) -> dict[str, float]:
    """Forward FLOPs {'vit', 'merger', 'llm'} of `patches` real ViT patches whose full-attention
    segments (one per image or video frame) have sizes s_j with sum(s_j^2) = `frames_sq`, and of
    `tokens` real text tokens whose packed samples have lengths n_k with sum(n_k^2) =
    `samples_sq`. Costs add over samples, so one sample's or one packed row's cost is the same
    function of its own counts."""
    v, t = cfg.vision, cfg.text
    n_full = len(v.fullatt_block_indexes)
    d, i = v.hidden_size, v.intermediate_size
    vit = 2 * patches * v.patch_dim * d + 2 * patches * v.depth * d * (4 * d + 3 * i)
    vit += 4 * d * ((v.depth - n_full) * patches * v.window_patches + n_full * frames_sq)
    m = d * v.merge_unit
    merger = 2 * patches / v.merge_unit * (m * m + m * v.out_hidden_size)
    qkvo = t.hidden_size * t.head_dim * (2 * t.num_heads + 2 * t.num_kv_heads)
    per_token = t.num_layers * (qkvo + 3 * t.hidden_size * t.intermediate_size)
    llm = 2 * tokens * (per_token + t.hidden_size * t.vocab_size)
    llm += t.num_layers * 4 * (samples_sq / 2) * t.num_heads * t.head_dim  # causal: half
    return {"vit": vit, "merger": merger, "llm": llm}


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
