"""One config source: experiment configs built from the library's dataclasses, read back
strictly (an unknown key is an error naming it), the architecture given in the config (preset +
overrides) with random weights drawn by the trainer; and the library loaders (model, processor
arrays, latest checkpoint)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import base, demo
from experiments.train import model_and_params
from qwen25vl_jax.checkpoint import latest_checkpoint, save_params
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.dataclass_dict import as_plain, from_plain
from qwen25vl_jax.loading import load_model, read_processor_arrays
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.param_paths import flatten
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train.optimizer import OptimConfig
from qwen25vl_jax.train.trainer import Trainer


# ---- strict config sections ---------------------------------------------------------------
def test_sections_hold_the_dataclass_defaults_and_read_back_equal():
    c = base.get_config("7b")
    assert from_plain(OptimConfig, c.optim.to_dict(), where="optim") == OptimConfig()
    assert c.run.to_dict() == as_plain(RunOptions(dtype="bfloat16", remat="full"))
    assert from_plain(RunOptions, c.run.to_dict()) == RunOptions(dtype="bfloat16", remat="full")
    c.optim.vit_lr = 1e-4  # a None default keeps its type for command-line overrides
    assert from_plain(OptimConfig, c.optim.to_dict()).group_lr("vit") == 1e-4


def test_unknown_keys_are_errors_naming_them():
    with pytest.raises(ValueError, match=r"unknown config key optim\.weight_decy"):
        from_plain(OptimConfig, {"lr": 1.0, "weight_decy": 0.1}, where="optim")
    c = base.get_config("tiny")
    c.optim.weight_decy = 0.1  # a config file may add keys; reading them back refuses them
    with pytest.raises(ValueError, match=r"unknown config key optim\.weight_decy"):
        base.check_keys(c)
    c = demo.get_config()
    c.data.fps = 4.0  # the old name of data.video_fps: refused, not ignored
    with pytest.raises(ValueError, match=r"unknown config key data\.fps"):
        base.check_keys(c)
    with pytest.raises(ValueError, match=r"unknown config key model\.overrides\.text\.layers"):
        ModelConfig.preset("tiny", {"text": {"layers": 3}})
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")


# ---- the architecture from the config -------------------------------------------------------
def test_preset_with_overrides():
    cfg = ModelConfig.preset(
        "tiny",
        {
            "text": {"num_layers": 3, "mrope_section": [1, 1, 2]},
            "vision": {"depth": 4},
            "position_after_video": "max",
        },
    )
    tiny = ModelConfig.tiny()
    assert cfg.text.num_layers == 3 and cfg.vision.depth == 4
    assert cfg.position_after_video == "max" and cfg.text.mrope_section == (1, 1, 2)
    assert cfg.text.hidden_size == tiny.text.hidden_size  # the rest is the preset's
    with pytest.raises(ValueError, match="out_hidden_size 36 != text hidden_size 64"):
        ModelConfig.preset("tiny", {"text": {"hidden_size": 64}, "vision": {"out_hidden_size": 36}})


def test_trainer_builds_random_weights_of_the_configured_architecture():
    c = base.get_config("tiny")
    c.model.overrides = {
        "text": {"num_layers": 3},
        "vision": {"depth": 2, "fullatt_block_indexes": (1,)},
    }
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    model_cfg, params = model_and_params(c, mesh)
    assert params is None  # random weights, drawn by the trainer
    assert model_cfg == ModelConfig.preset("tiny", c.model.overrides.to_dict())
    trainer = Trainer(model_cfg, OptimConfig(), RunOptions(), mesh)
    state = trainer.init_state(seed=0, init_seed=5)
    flat = {**state.trainable, **state.frozen}
    assert flat["decoder/layers/q_kernel"].shape[0] == 3
    assert flat["visual/blocks/qkv_kernel"].shape[0] == 2
    # init_seed draws the weights, as Qwen25VL(cfg, rngs=nnx.Rngs(init_seed)) does
    eager = flatten(nnx.to_pure_dict(nnx.state(eager_model(model_cfg, 5))))
    np.testing.assert_allclose(np.asarray(flat["decoder/embed"]), eager["decoder/embed"], rtol=1e-6)
    c.model.init_checkpoint = "somewhere"
    with pytest.raises(ValueError, match=r"model\.overrides .* apply to a preset"):
        model_and_params(c, mesh)


def eager_model(model_cfg, seed):
    from qwen25vl_jax.model.qwen25vl import Qwen25VL

    return Qwen25VL(model_cfg, rngs=nnx.Rngs(seed))


# ---- loaders -----------------------------------------------------------------------------
def test_read_processor_arrays_validates_each_array(tmp_path):
    ok = {
        "input_ids": np.ones((2, 5), np.int64),
        "attention_mask": np.ones((2, 5), bool),
        "image_grid_thw": np.asarray([[1, 2, 2]]),
        "pixel_values": np.zeros((4, 6), np.float32),
        "second_per_grid_ts": np.zeros(0, np.float32),
    }
    np.savez(tmp_path / "ok.npz", **ok)
    got = read_processor_arrays(tmp_path / "ok.npz")
    assert sorted(got) == sorted(ok) and all(np.array_equal(got[k], ok[k]) for k in ok)

    def fails(match, **arrays):
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=match):
            read_processor_arrays(path)

    ids = ok["input_ids"]
    fails(r"bad\.npz: missing 'input_ids'", attention_mask=ids)
    fails(r"unknown arrays \['pixels'\]", input_ids=ids, pixels=np.zeros(3))
    fails(r"'input_ids' has shape \(5,\), expected rank 2", input_ids=ids[0])
    fails(r"'input_ids' has dtype float32", input_ids=ids.astype(np.float32))
    fails(
        r"'image_grid_thw' has shape \(1, 2\), expected \[n, 3\]",
        input_ids=ids,
        image_grid_thw=np.ones((1, 2), np.int64),
    )
    fails(r"attention_mask shape \(2, 4\) differs", input_ids=ids, attention_mask=ids[:, :4])
    fails(r"not a readable \.npz", input_ids=np.asarray([{"a": 1}], dtype=object))  # a pickle
    with pytest.raises(FileNotFoundError, match="none.npz: no such inputs file"):
        read_processor_arrays(tmp_path / "none.npz")


def test_load_model_from_checkpoint_or_hf_dir(tiny, tmp_path):
    from_hf, cfg = load_model(hf_dir=tiny.path)
    ckpt = save_params(tmp_path / "ck", tiny.jax, tiny.cfg)
    from_ckpt, cfg2 = load_model(checkpoint=ckpt)
    assert cfg == cfg2 == tiny.cfg
    a, b = (flatten(nnx.to_pure_dict(nnx.state(m))) for m in (from_hf, from_ckpt))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="exactly one"):
        load_model(hf_dir=tiny.path, checkpoint=ckpt)
    with pytest.raises(ValueError, match="exactly one"):
        load_model()


def test_latest_checkpoint(tiny, tmp_path):
    ckpt = save_params(tmp_path / "ck", tiny.jax, tiny.cfg)
    assert latest_checkpoint(ckpt) == ckpt  # a checkpoint as is
    work = tmp_path / "work"
    for step in (2, 10):
        os.makedirs(work / str(step) / "params")
        (work / str(step) / "params" / "_METADATA").write_text("{}")
    os.makedirs(work / "30" / "params")  # being written: no _METADATA yet
    os.makedirs(work / "40.orbax-checkpoint-tmp-1" / "params")
    assert latest_checkpoint(work) == os.path.join(work, "10")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint nor"):
        latest_checkpoint(tmp_path / "empty")


def test_padding_defaults_to_the_models_endoftext():
    """Rows the packer leaves empty pad with the model's own <|endoftext|> (bos_token_id), in
    range for any vocabulary, not the real vocabulary's id 151643."""
    from qwen25vl_jax.data.assemble import assemble
    from qwen25vl_jax.data.pipeline import PipelineConfig

    cfg = ModelConfig.tiny()  # vocabulary 211, <|endoftext|> 205
    row = assemble([[]], cfg, seq_len=16, num_slots=16)  # the packer's empty row
    assert (row.tokens == cfg.bos_token_id).all() and not row.segment_ids.any()
    assert PipelineConfig(paths=("x.jsonl",)).pad_id is None  # resolved from the model config
