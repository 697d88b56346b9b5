"""`experiments.train` with `data.source=records` feeds packed batches from the Grain pipeline."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from experiments.configs import base
from experiments.train import make_data
from qwen25vl_jax.cli_errors import InputError
from qwen25vl_jax.config import ModelConfig


def test_records_source_yields_packed_batches(tmp_path):
    pixels = (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(6):
            messages = [{"role": "user", "content": "<image>What is it?"},
                        {"role": "assistant", "content": f"A thing {i}."}]  # fmt: skip
            f.write(json.dumps({"messages": messages, "images": ["a.png"]}) + "\n")
    c = base.get_config("tiny")
    c.data.source, c.data.paths, c.data.media_root = (
        "records",
        str(tmp_path / "d.jsonl"),
        str(tmp_path),
    )
    c.data.seq_len, c.data.num_slots, c.train.batch_size = 256, 64 * 16, 2
    real = ModelConfig()  # the real vocabulary's special ids (the tokenizer is the real one)
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
           "bos_token_id", "eos_token_id")  # fmt: skip
    cfg = dataclasses.replace(ModelConfig.tiny(vocab_size=151665),
                              **{k: getattr(real, k) for k in ids})  # fmt: skip
    batch = next(make_data(c, cfg))
    assert batch.tokens.shape == (2, 256) and batch.patches.shape == (2, 64 * 16, 1176)
    assert (batch.tokens == cfg.image_token_id).sum() > 0
    assert batch.loss_mask.sum() > 0 and batch.tokens.max() < cfg.text.vocab_size
    assert (batch.vision_index >= 0).sum() == (batch.tokens == cfg.image_token_id).sum()


def test_curriculum_reads_its_records_first_and_resumes_across_the_switch(tmp_path):
    """data.curriculum_steps batches of data.curriculum_paths (text only here), then data.paths
    (with images); a reader restored from the state after any batch, the switch included,
    continues as the unbroken one."""
    pixels = (np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    for name, media in (("first", {}), ("main", {"images": ["a.png"]})):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for i in range(6):
                image = "<image>" if media else ""
                messages = [{"role": "user", "content": f"{image}What is {name} {i}?"},
                            {"role": "assistant", "content": f"A thing {i}."}]  # fmt: skip
                f.write(json.dumps({"messages": messages, **media}) + "\n")
    c = base.get_config("tiny")
    c.data.paths, c.data.media_root = str(tmp_path / "main.jsonl"), str(tmp_path)
    c.data.curriculum_paths, c.data.curriculum_steps = str(tmp_path / "first.jsonl"), 2
    c.data.seq_len, c.data.num_slots, c.train.batch_size = 64, 64 * 16, 2
    real = ModelConfig()
    ids = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
           "bos_token_id", "eos_token_id")  # fmt: skip
    cfg = dataclasses.replace(ModelConfig.tiny(vocab_size=151665),
                              **{k: getattr(real, k) for k in ids})  # fmt: skip
    data = make_data(c, cfg)
    states, batches = [], []
    for _ in range(5):
        states.append(data.get_state())
        batches.append(next(data))
    data.close()
    images = [int((b.tokens == cfg.image_token_id).sum()) for b in batches]
    assert images[:2] == [0, 0] and min(images[2:]) > 0, images
    for k in (1, 2, 3):  # before the switch, at it, after it
        resumed = make_data(c, cfg)
        resumed.set_state(json.loads(json.dumps(states[k])))  # as a checkpoint keeps it
        for want in batches[k:]:
            np.testing.assert_array_equal(next(resumed).tokens, want.tokens)
        resumed.close()


def test_curriculum_without_its_records_is_refused(tmp_path):
    c = base.get_config("tiny")
    (tmp_path / "d.jsonl").write_text("")
    c.data.paths, c.data.curriculum_steps = str(tmp_path / "d.jsonl"), 5
    with pytest.raises(InputError, match="curriculum_paths"):
        make_data(c, ModelConfig.tiny())
    c.data.curriculum_paths = str(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="missing.jsonl"):
        make_data(c, ModelConfig.tiny())
