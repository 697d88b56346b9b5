"""Figures for BUILD_NOTES.md: ViT block FLOPs vs patches (window linear, full quadratic) at the
released ViT widths, and compile seconds of the whole model at 2 vs 8 decoder layers (scan).

Usage: python benchmarks/model_costs.py
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.hf_format import inputs_from_hf
from qwen25vl_jax.model.cost import vision_block_flops
from qwen25vl_jax.model.qwen25vl import Qwen25VL, forward


def flops_table():
    cfg = ModelConfig.qwen25vl_7b().vision
    print("ViT block FLOPs at the released widths (hidden 1280, 16 heads, window 112):")
    base = {}
    for n in (1024, 4096, 16384):
        for full in (False, True):
            f = vision_block_flops(cfg, n, full=full)
            base.setdefault(full, f)
            kind = "full  " if full else "window"
            print(
                f"  {kind} block, {n:6d} patches: {f / 1e9:9.2f} GFLOP "
                f"({f / base[full]:.2f}x the 1024-patch cost)"
            )


def compile_seconds(num_layers: int) -> float:
    cfg = ModelConfig.tiny(
        num_layers=num_layers,
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        mrope_section=(8, 12, 12),
        intermediate_size=512,
    )
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    grid = np.array([[1, 8, 8]])
    ids = np.array([[3] + [cfg.image_token_id] * 16 + [5] * 40])
    arrays = {
        "input_ids": ids,
        "pixel_values": np.zeros((64, 1176), np.float32),
        "image_grid_thw": grid,
    }
    inputs, _ = inputs_from_hf(cfg, arrays)
    t0 = time.perf_counter()
    jax.jit(forward).lower(graphdef, state, inputs).compile()
    return time.perf_counter() - t0


if __name__ == "__main__":
    flops_table()
    for n in (2, 8, 32):
        print(f"compile seconds, whole model, {n:2d} decoder layers: {compile_seconds(n):.2f}")
