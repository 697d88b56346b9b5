"""`experiments.train` with `data.source=records` feeds packed batches from the Grain pipeline."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from PIL import Image

from experiments.configs import base
from experiments.train import make_data
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
