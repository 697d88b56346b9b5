"""RL prompt records -> `RLPrompt`: a generation prompt plus the ground truth a reward reads.

A record is an SFT record (`records.py`: the same formats, media, placeholders, errors and
skip-and-count policy) whose conversation ends with the user's question, plus one or more
ground-truth keys:

    {"messages": [{"role": "user", "content": "<image>Where is the red circle?"}],
     "images": ["a.png"], "bbox_2d": [x1, y1, x2, y2]}
    ... "count": 3        ... "second": 2.5        ... "answer": "yes"

``bbox_2d`` follows `RecordOptions.ground_coords` like boxes in SFT text ("original": pixels of
the original image, rescaled here to the resized image the model sees, where Qwen2.5-VL's
answers are; "resized": already there). An optional ``"task"`` names the task; by default it is
read from the keys (bbox_2d: grounding, count: counting, second: timing, answer: answer).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.records import (
    RecordError,
    RecordOptions,
    conversation_sample,
    decode_record,
    load_media,
    parse_record,
)
from qwen25vl_jax.data.sample import Sample
from qwen25vl_jax.data.vision import scale_boxes

TASK_OF_KEY = {"bbox_2d": "grounding", "count": "counting", "second": "timing", "answer": "answer"}


@dataclasses.dataclass(frozen=True)
class RLPrompt:
    """One RL prompt.

    sample: the generation prompt (ends with the assistant header; nothing supervised).
    truth: the ground-truth keys the record gave: "bbox_2d" (x1, y1, x2, y2) float in pixels of
    the *resized* image, "count" int, "second" float, "answer" str. image_hw: (height, width)
    of the resized image the question is about (the last one shown), or None. duration: seconds
    of the last video shown, or None.
    """

    record_id: str
    task: str
    sample: Sample
    truth: Mapping[str, Any]
    image_hw: tuple[int, int] | None = None
    duration: float | None = None


def _truth(raw: Mapping, rid: str) -> dict[str, Any]:
    """The ground-truth keys of a record, checked (RecordError "malformed" naming the key)."""
    truth: dict[str, Any] = {}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if "bbox_2d" in raw:
        box = raw["bbox_2d"]
        ok = isinstance(box, list) and len(box) == 4 and all(number(v) for v in box)
        if not ok or not all(math.isfinite(v) for v in box) or box[0] >= box[2] or box[1] >= box[3]:
            raise RecordError(rid, "malformed", f"bbox_2d must be [x1, y1, x2, y2], x1 < x2, "
                              f"y1 < y2: {box!r}")  # fmt: skip
        truth["bbox_2d"] = tuple(float(v) for v in box)
    if "count" in raw:
        c = raw["count"]
        if not number(c) or c != int(c) or c < 0:
            raise RecordError(rid, "malformed", f"count must be a whole number >= 0: {c!r}")
        truth["count"] = int(c)
    if "second" in raw:
        t = raw["second"]
        if not number(t) or not math.isfinite(t) or t < 0:
            raise RecordError(rid, "malformed", f"second must be a number >= 0: {t!r}")
        truth["second"] = float(t)
    if "answer" in raw:
        a = raw["answer"]
        if not isinstance(a, str) or not a.strip():
            raise RecordError(rid, "malformed", f"answer must be a non-empty string: {a!r}")
        truth["answer"] = a
    if not truth:
        raise RecordError(rid, "malformed", f"no ground truth: give one of {sorted(TASK_OF_KEY)}")
    return truth


def rl_prompt(
    payload: bytes | str | Mapping,
    record_id: str,
    *,
    cfg: ModelConfig,
    tokenizer: Any,
    options: RecordOptions = RecordOptions(),  # noqa: B008 (frozen)
) -> RLPrompt:
    """One RL prompt record -> `RLPrompt` (media decoded and resized as for training). Raises
    `RecordError` naming the record and one of `records.REASONS`."""
    raw = decode_record(payload, record_id)
    conv = parse_record(raw, record_id, require_reply=False)
    rid = conv.record_id
    if conv.messages[-1]["role"] != "user":
        raise RecordError(rid, "malformed", "an RL prompt must end with a user turn")
    truth = _truth(raw, rid)
    task = raw.get("task") or TASK_OF_KEY[next(k for k in TASK_OF_KEY if k in truth)]
    if not isinstance(task, str):
        raise RecordError(rid, "malformed", f"task must be a string: {task!r}")
    media = load_media(conv, cfg, options)
    ps = cfg.vision.patch_size
    images = [m for m in media if m.kind == "image"]
    videos = [m for m in media if m.kind == "video"]
    image_hw = images[-1].resized_hw(ps) if images else None
    if "bbox_2d" in truth:
        if image_hw is None:
            raise RecordError(rid, "malformed", "bbox_2d needs an image in the prompt")
        if options.ground_coords == "original":
            box = scale_boxes(np.asarray(truth["bbox_2d"]), images[-1].original_hw, image_hw)
            truth["bbox_2d"] = tuple(float(v) for v in box)
    sample = conversation_sample(conv, media, cfg, tokenizer, options, upto=len(conv.messages))
    duration = videos[-1].duration if videos else None
    return RLPrompt(rid, task, sample, truth, image_hw, duration)


def read_rl_prompts(
    path: str,
    *,
    cfg: ModelConfig,
    tokenizer: Any,
    options: RecordOptions = RecordOptions(),  # noqa: B008 (frozen)
    on_bad: str = "raise",
) -> tuple[list[RLPrompt], list[RecordError]]:
    """The prompts of a JSONL file and the records skipped (on_bad="skip": each bad record is
    a `RecordError` in the list; "raise": the first one is raised)."""
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
    prompts, skipped = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                prompts.append(
                    rl_prompt(line, f"{path}:{n}", cfg=cfg, tokenizer=tokenizer, options=options)
                )
            except RecordError as err:
                if on_bad == "raise":
                    raise
                skipped.append(err)
    return prompts, skipped
