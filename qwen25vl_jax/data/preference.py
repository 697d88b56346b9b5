"""Preference records -> `Pair`s (chosen, rejected `Sample`s sharing their media) -> a
`PreferenceBatch`.

A record is one JSON object in the formats users have; the prompt is an SFT conversation
(`records.py`: same media, placeholders, grounding and errors), the replies are extra keys:

* LLaMA-Factory / TRL: ``{"messages": [...prompt...], "images": ["a.jpg"], "chosen": "...",
  "rejected": "..."}``; ``chosen`` / ``rejected`` may also be an assistant message or a list
  of messages (TRL's conversational form); ``"prompt"`` (a string or message list) may stand
  for ``"messages"``;
* ShareGPT (LLaMA-Factory's ranking format): ``{"conversations": [{"from": "human", "value":
  "<image>..."}], "chosen": {"from": "gpt", "value": "..."}, "rejected": {...}, "images": [...]}``.

Only the replies are supervised: the prompt's tokens (assistant turns inside the prompt too)
are masked out of both samples. The media are decoded once and shared by both replies; in a
batch the two replies of a pair are one group of `assemble.assemble`, so the ViT runs once per
pair. Every failure is a `RecordError` naming the record, as for SFT records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.records import (
    Conversation,
    RecordError,
    RecordOptions,
    conversation_sample,
    decode_record,
    load_media,
    parse_record,
)
from qwen25vl_jax.data.sample import Sample
from qwen25vl_jax.model.inputs import PreferenceBatch

_PROMPT_KEYS = ("messages", "conversations", "prompt")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One preference pair: two samples with the same prompt and media, different replies
    (loss masks on the replies only)."""

    chosen: Sample
    rejected: Sample

    @property
    def num_tokens(self) -> int:
        return self.chosen.num_tokens + self.rejected.num_tokens

    @property
    def num_patches(self) -> int:
        return self.chosen.num_patches  # shared: the ViT sees them once

    def num_slots(self, cfg: ModelConfig) -> int:
        return self.chosen.num_slots(cfg)


def _turns(value: Any, rid: str, key: str) -> list:
    """A prompt or reply as a list of turns: a `prompt` / reply string is one user / assistant
    turn, a reply may be one message; `messages` / `conversations` are lists as in SFT."""
    single = key in ("prompt", "chosen", "rejected")
    if isinstance(value, str) and single:
        return [{"role": "user" if key == "prompt" else "assistant", "content": value}]
    if isinstance(value, Mapping) and single:
        return [value]
    if isinstance(value, list) and value:
        return value
    what = "a string, a message or a non-empty message list" if single else "a non-empty list"
    raise RecordError(rid, "malformed", f"'{key}' must be {what}")


def parse_preference(record: Any, record_id: str) -> tuple[Conversation, Conversation, int]:
    """A decoded record -> (chosen conversation, rejected conversation, number of prompt
    messages, the system message included). RecordError as `records.parse_record`."""
    if not isinstance(record, Mapping):
        raise RecordError(
            record_id, "malformed", f"expected a JSON object, got {type(record).__name__}"
        )
    rid = f"{record_id} (id={record['id']})" if "id" in record else record_id
    key = next((k for k in _PROMPT_KEYS if k in record), None)
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if key is None or missing:
        what = missing or ["messages / conversations / prompt"]
        raise RecordError(rid, "malformed", f"a preference record needs {' and '.join(what)}")
    prompt = _turns(record[key], rid, key)
    rest = {k: v for k, v in record.items() if k not in (*_PROMPT_KEYS, "chosen", "rejected")}
    convs = []
    for side in ("chosen", "rejected"):
        reply = _turns(record[side], rid, side)
        convs.append(parse_record({**rest, "messages": prompt + reply}, record_id))
        n_prompt = len(convs[-1].messages) - len(reply)
    return convs[0], convs[1], n_prompt


def record_to_pair(
    payload: bytes | str | Mapping,
    record_id: str,
    *,
    cfg: ModelConfig,
    tokenizer: Any,
    options: RecordOptions = RecordOptions(),  # noqa: B008 (frozen)
) -> Pair:
    """One preference record -> `Pair`; the media decoded once. RecordError naming the record."""
    chosen, rejected, n_prompt = parse_preference(decode_record(payload, record_id), record_id)
    media = load_media(chosen, cfg, options)
    prompt = conversation_sample(chosen, media, cfg, tokenizer, options, upto=n_prompt)
    n = prompt.num_tokens
    pair = []
    for conv in (chosen, rejected):
        sample = conversation_sample(conv, media, cfg, tokenizer, options)
        if not np.array_equal(sample.input_ids[:n], prompt.input_ids):
            raise RecordError(conv.record_id, "malformed", "the reply changes the prompt's tokens")
        mask = sample.loss_mask.copy()
        mask[:n] = False  # the prompt (its assistant turns too) is context, not a reply
        pair.append(dataclasses.replace(sample, loss_mask=mask))
    return Pair(*pair)


def preference_batch(
    rows: Sequence[Sequence[Pair]],
    cfg: ModelConfig,
    *,
    seq_len: int,
    num_slots: int,
    pairs_per_row: int,
    pad_id: int | None = None,
) -> PreferenceBatch:
    """A `PreferenceBatch` of B = len(rows) rows holding up to P = pairs_per_row pairs each.

    Each pair is one group of `assemble` (its media once in the row's ViT layout, gathered by
    both replies); pair k of a row is segments (2k + 1, 2k + 2). ref_logps are 0 (the reference
    fills them). ValueError when a row holds more than P pairs or overflows the budgets."""
    segments = np.zeros((len(rows), pairs_per_row, 2), np.int32)
    for r, row in enumerate(rows):
        if len(row) > pairs_per_row:
            raise ValueError(f"row {r}: {len(row)} pairs, over pairs_per_row {pairs_per_row}")
        segments[r, : len(row)] = np.arange(1, 2 * len(row) + 1).reshape(-1, 2)
    batch = assemble(
        [[(p.chosen, p.rejected) for p in row] for row in rows],
        cfg,
        seq_len=seq_len,
        num_slots=num_slots,
        pad_id=pad_id,
    )
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return PreferenceBatch(
        **fields,
        pair_segments=segments,
        ref_logps=np.zeros((len(rows), pairs_per_row, 2), np.float32),
    )
