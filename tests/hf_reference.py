"""Builds random transformers reference models and runs them on processor-format inputs.

Biases and norm weights are re-drawn away from 0 and 1: the default init would hide a missing
bias or norm weight.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.layout import token_modalities
from qwen25vl_jax.hf_weights import expected_names


def build_hf_model(cfg: ModelConfig, seed: int = 0, std: float = 0.05):
    """A float32, eval-mode, eager-attention transformers model with random non-trivial weights."""
    d = cfg.to_hf_dict()
    hcfg = Qwen2_5_VLConfig(**d)
    hcfg.text_config.initializer_range = std
    hcfg.vision_config.initializer_range = std
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hcfg).eval().float()
    model.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    return model


def hf_inputs_to_torch(cfg: ModelConfig, arrays: dict) -> dict:
    """Processor-format NumPy arrays -> transformers forward kwargs (with mm_token_type_ids)."""
    out = {}
    for k, v in arrays.items():
        if v is None:
            continue
        t = torch.from_numpy(np.asarray(v))
        out[k] = t.float() if t.is_floating_point() else t.long()
    out["mm_token_type_ids"] = torch.from_numpy(token_modalities(arrays["input_ids"], cfg)).long()
    return out


def hf_logits(model, cfg: ModelConfig, arrays: dict):
    """(logits float32[B, L, V], position_ids int[3, B, L], rope_deltas int[B, 1]) from torch."""
    kw = hf_inputs_to_torch(cfg, arrays)
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    with torch.no_grad():
        pos, deltas = model.model.get_rope_index(
            kw["input_ids"], kw["mm_token_type_ids"], attention_mask=kw.get("attention_mask"),
            **grids,
        )  # fmt: skip
        logits = model(**kw, position_ids=pos).logits
    return logits.numpy(), pos.numpy(), deltas.numpy()


def assert_grads_match(cfg: ModelConfig, ref_grads: dict, grads: dict, rel: float) -> float:
    """Every weight's gradient (ours {path: array}) within `rel` (relative L2) of the reference
    ({released name: numpy array}); returns the worst relative error, asserted > 0 (a
    comparison of zeros proves nothing)."""
    worst = 0.0
    for rule, layer, name in expected_names(cfg):
        ref = rule.to_ours(ref_grads[name], cfg)
        ours = np.asarray(grads[rule.path])
        ours = ours if layer is None else ours[layer]
        err = np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-12)
        worst = max(worst, err)
        assert err <= rel, (name, err)
    assert worst > 0
    return worst
