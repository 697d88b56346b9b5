"""Presets hold the released config.json values; `from_hf_config` reads the released flat layout
and transformers 5's nested layout to the same config."""

from __future__ import annotations

import json

import pytest
from transformers import Qwen2_5_VLConfig

from qwen25vl_jax.config import ModelConfig, config_from_hf_dict, from_hf_config

# Released config.json values (Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct).
RELEASED = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
               tie_word_embeddings=True, vis_intermediate=3420, out_hidden_size=2048),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
               tie_word_embeddings=False, vis_intermediate=3420, out_hidden_size=3584),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                tie_word_embeddings=False, vis_intermediate=3456, out_hidden_size=5120),
    "72b": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8, vocab_size=152064,
                tie_word_embeddings=False, vis_intermediate=3456, out_hidden_size=8192),
}  # fmt: skip
PRESETS = {"3b": ModelConfig.qwen25vl_3b, "7b": ModelConfig.qwen25vl_7b,
           "32b": ModelConfig.qwen25vl_32b, "72b": ModelConfig.qwen25vl_72b}  # fmt: skip


@pytest.mark.parametrize("size", sorted(RELEASED))
def test_preset_holds_released_values(size):
    d = PRESETS[size]().to_hf_dict()
    want = dict(RELEASED[size])
    vis_intermediate, out_hidden = want.pop("vis_intermediate"), want.pop("out_hidden_size")
    for k, v in want.items():
        assert d[k] == v, (k, d[k], v)
    v = d["vision_config"]
    assert (v["hidden_size"], v["depth"], v["num_heads"], v["intermediate_size"]) == (
        1280, 32, 16, vis_intermediate)  # fmt: skip
    assert v["out_hidden_size"] == out_hidden and v["tokens_per_second"] == 2
    assert v["window_size"] == 112 and v["fullatt_block_indexes"] == [7, 15, 23, 31]
    assert d["rope_theta"] == 1e6 and d["rope_scaling"]["mrope_section"] == [16, 24, 24]
    assert d["rms_norm_eps"] == 1e-6 and d["max_position_embeddings"] == 128000


@pytest.mark.parametrize("size", sorted(RELEASED))
def test_flat_and_nested_layouts_read_alike(size, tmp_path):
    cfg = PRESETS[size]()
    flat = cfg.to_hf_dict()
    assert config_from_hf_dict(flat) == cfg
    nested = Qwen2_5_VLConfig(**flat).to_dict()  # transformers 5: text_config, rope_parameters
    assert "text_config" in nested and "rope_parameters" in nested["text_config"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(nested))
    assert from_hf_config(tmp_path) == cfg


def test_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl", "vision_config": {}}')
    with pytest.raises(ValueError, match=r"config.json: model_type 'qwen2_vl'"):
        from_hf_config(tmp_path)
    d = ModelConfig.tiny().to_hf_dict()
    del d["num_attention_heads"]
    with pytest.raises(ValueError, match="missing field 'num_attention_heads'"):
        config_from_hf_dict(d, source="x/config.json")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_hf_config(tmp_path / "absent")
