"""A reduced vocabulary for tiny models on CPUs: a byte-level BPE trained on your own texts that
keeps the Qwen2.5-VL special tokens.

The real Qwen2.5 vocabulary has 151,665 tokens: for a model of width 128 its embedding and
`lm_head` alone are 39M parameters, and the output softmax dominates a training step on a CPU.
A small task needs a few hundred tokens. `build_small_tokenizer` trains a BPE of `vocab_size`
tokens with the Qwen2 pipeline (NFC, the Qwen2 split regex, byte-level; digits stay single
tokens, so numbers are spelled digit by digit as in Qwen2.5) and puts the 22 Qwen2.5-VL added
tokens first, at ids 0..21 in their official order (`<|endoftext|>` = 0, `<|im_start|>` = 1,
`<|im_end|>` = 2, ..., `<|image_pad|>` = 12, `<|video_pad|>` = 13), with their special flags.
Everything that takes a tokenizer (`encode_chat`, the pipeline, generation) works unchanged;
the model config must use the matching ids: `dataclasses.replace(cfg, **model_token_ids(tok))`.
Any text still encodes (all 256 bytes are in the vocabulary), only less compactly.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE

from qwen25vl_jax.atomic_write import atomic_write_text
from qwen25vl_jax.data.chat import render_chat
from qwen25vl_jax.data.tokenizer import (
    ADDED_TOKENS,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    add_qwen_tokens,
    qwen2_tokenizer,
    tokenizer_config,
)

SPECIAL_IDS = {content: i for i, (_, content, _) in enumerate(ADDED_TOKENS)}
_SPECIAL_SPLIT = re.compile("|".join(re.escape(c) for _, c, _ in ADDED_TOKENS))


def text_pieces(texts: Iterable[str]) -> Iterable[str]:
    """The plain-text pieces between special tokens (what the BPE is trained on)."""
    for text in texts:
        yield from (p for p in _SPECIAL_SPLIT.split(text) if p)


def chat_texts(conversations: Iterable[list[dict]]) -> Iterable[str]:
    """Rendered chat-template texts of conversations (structured messages as `encode_chat`
    takes): the system prompt, role headers and separators are learnt with the replies."""
    for messages in conversations:
        yield render_chat(messages)


def build_small_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE of at most `vocab_size` tokens trained on `texts` (special tokens in
    them are skipped), with the 22 Qwen2.5-VL added tokens at ids 0..21."""
    if vocab_size < len(ADDED_TOKENS) + 256:
        raise ValueError(f"vocab_size {vocab_size} < {len(ADDED_TOKENS)} special + 256 bytes")
    tok = qwen2_tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        min_frequency=2,
        special_tokens=[c for _, c, _ in ADDED_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text_pieces(texts), trainer=trainer)
    add_qwen_tokens(tok, SPECIAL_IDS)  # re-register with Qwen's flags, same ids
    return tok


# the ModelConfig token-id fields and the added tokens they name
MODEL_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
}
# their ids in every small vocabulary (the added tokens come first, in their official order)
TOKEN_IDS = {field: SPECIAL_IDS[content] for field, content in MODEL_TOKENS.items()}


def model_token_ids(tok: Tokenizer) -> dict[str, int]:
    """The `ModelConfig` token-id fields for `tok` (to `dataclasses.replace` a config with)."""
    out = {}
    for field, content in MODEL_TOKENS.items():
        token_id = tok.token_to_id(content)
        if token_id is None:
            raise ValueError(f"tokenizer has no {content}")
        out[field] = token_id
    return out


def save_small_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Writes `tokenizer.json` and a `tokenizer_config.json` whose added-token ids are this
    vocabulary's (so transformers' Qwen2Tokenizer loads the directory too)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / TOKENIZER_FILE, tok.to_str(pretty=False))
    config = tokenizer_config(token_id=tok.token_to_id, model_max_length=32768)
    atomic_write_text(out / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return out
