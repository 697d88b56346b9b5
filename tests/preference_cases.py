"""Preference records in each supported format, their images, and a small tokenizer for them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from PIL import Image

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data import small_vocab

BOX = '{"bbox_2d": [10, 20, 50, 40]}'  # in pixels of the original 100 x 60 image


def records() -> list[dict]:
    """One record per format: LLaMA-Factory strings (with grounding), TRL conversational
    (prompt + message lists), ShareGPT ranking (single messages), and a system prompt."""
    return [
        {"messages": [{"role": "user", "content": "<image>Where is the cat?"}],
         "images": ["a.png"], "chosen": f"Here: {BOX}", "rejected": "There is no cat."},
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                    "text": "How many?"}]}],
         "images": ["b.png"], "chosen": [{"role": "assistant", "content": "3"}],
         "rejected": [{"role": "assistant", "content": "five or six"}]},
        {"conversations": [{"from": "human", "value": "<image>Describe it."}],
         "chosen": {"from": "gpt", "value": "A red square."},
         "rejected": {"from": "gpt", "value": "A dog."}, "image": "a.png", "id": "sg"},
        {"system": "Be brief.", "messages": [{"role": "user", "content": "<image>Colour?"},
                                             {"role": "assistant", "content": "Red."},
                                             {"role": "user", "content": "Sure?"}],
         "images": ["b.png"], "chosen": "Yes.", "rejected": "No, blue."},
    ]  # fmt: skip


def write_data(directory, copies: int = 1) -> str:
    """The images and `copies` x `records()` as prefs.jsonl in `directory`; returns its path."""
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (60, 100)), ("b.png", (56, 56))):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(directory / name)
    path = directory / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for _ in range(copies) for r in records()))
    return str(path)


def tokenizer_and_config(**text):
    """A small BPE over the records' texts and the tiny model config with its vocabulary."""
    texts = [json.dumps(r) for r in records()]
    tok = small_vocab.build_small_tokenizer(texts, vocab_size=300)
    cfg = ModelConfig.tiny(vocab_size=tok.get_vocab_size(), **text)
    return tok, dataclasses.replace(cfg, **small_vocab.model_token_ids(tok))
