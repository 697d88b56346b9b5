"""Windowed ViT blocks cost linear in the number of patches (compiled cost analysis)."""

from __future__ import annotations

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.cost import vision_block_flops


def test_window_block_flops_linear_full_block_not():
    cfg = ModelConfig.tiny().vision
    n = 32 * cfg.window_patches
    window = vision_block_flops(cfg, 4 * n, full=False) / vision_block_flops(cfg, n, full=False)
    full = vision_block_flops(cfg, 4 * n, full=True) / vision_block_flops(cfg, n, full=True)
    assert window <= 4.4, window
    assert full > 4.4, full  # the check can fail: P x P attention is quadratic
