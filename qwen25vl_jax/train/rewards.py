"""Verifiable rewards: plain Python functions of (completion text, `RLPrompt`) -> float, or None
where the reward does not apply to the prompt (an IoU for a counting question).

Built in (registered by name in `REWARDS`; add your own with `@register_reward("name")`):

* ``format``: 1 when the whole answer has the expected form, else 0: grounding, one JSON box
  object ``{"bbox_2d": [4 numbers], ...}`` (or a list of them; a ```json fence allowed) and no
  other text; counting / timing, a bare number. Not applicable to free-text answers.
* ``iou``: IoU of the first box in the answer, clipped to the resized image, with the true box
  (both in the resized image's pixels, where Qwen2.5-VL grounds); 0 for no box or a box with no
  area inside the image. Boxes are read as evaluation reads them (`inference/grounding.py`).
* ``iou_hit``: 1 when that IoU is at least 0.5 (the evaluation's accuracy; VLM-R1's reward).
* ``count``: 1 when the answer's first number equals the true count (as the eval's accuracy).
* ``time``: minus the absolute error in seconds of the answer's first number; an unreadable
  answer costs the largest error a guess inside the video could make (as the eval's MAE).
* ``answer``: 1 when the answer equals the record's ``"answer"`` (case and spaces ignored).

`score` sums the configured ones with their weights; None counts as 0 in the sum.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from qwen25vl_jax.data.rl_prompts import RLPrompt
from qwen25vl_jax.inference.grounding import box_iou, clip_to_image, parse_grounding

RewardFn = Callable[[str, RLPrompt], "float | None"]
REWARDS: dict[str, RewardFn] = {}

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FENCE = re.compile(r"\A```(?:json)?\s*\n?(.*?)\n?```\Z", re.DOTALL)


def parse_number(text: str) -> float | None:
    """The first number in `text`, or None."""
    m = _NUMBER.search(text)
    return float(m.group()) if m else None


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: registers `fn(text, prompt) -> float | None` under `name` (unique)."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"a reward named {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return add


def _is_box(obj) -> bool:
    box = obj.get("bbox_2d") if isinstance(obj, dict) else None
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    )


@register_reward("format")
def format_reward(text: str, prompt: RLPrompt) -> float | None:
    body = text.strip()
    if "bbox_2d" in prompt.truth:
        fenced = _FENCE.match(body)
        try:
            value = json.loads(fenced.group(1) if fenced else body)
        except ValueError:
            return 0.0
        objects = value if isinstance(value, list) and value else [value]
        return float(all(_is_box(o) for o in objects))
    if "count" in prompt.truth or "second" in prompt.truth:
        return float(_NUMBER.fullmatch(body) is not None)
    return None


@register_reward("iou")
def iou_reward(text: str, prompt: RLPrompt) -> float | None:
    if "bbox_2d" not in prompt.truth:
        return None
    boxes = [d for d in parse_grounding(text).detections if d.kind == "bbox"]
    inside = clip_to_image(boxes[:1], prompt.image_hw)  # empty when no area is inside
    return box_iou(inside[0].coords, prompt.truth["bbox_2d"]) if inside else 0.0


@register_reward("iou_hit")
def iou_hit_reward(text: str, prompt: RLPrompt) -> float | None:
    iou = iou_reward(text, prompt)
    return None if iou is None else float(iou >= 0.5)


@register_reward("count")
def count_reward(text: str, prompt: RLPrompt) -> float | None:
    if "count" not in prompt.truth:
        return None
    return float(parse_number(text) == prompt.truth["count"])


@register_reward("time")
def time_reward(text: str, prompt: RLPrompt) -> float | None:
    if "second" not in prompt.truth:
        return None
    t, guess = prompt.truth["second"], parse_number(text)
    if guess is None:
        return -max(t, (prompt.duration or t) - t)
    return -abs(guess - t)


@register_reward("answer")
def answer_reward(text: str, prompt: RLPrompt) -> float | None:
    if "answer" not in prompt.truth:
        return None
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return float(norm(text) == norm(prompt.truth["answer"]))


def check_weights(weights: Mapping[str, float]) -> None:
    """ValueError naming an unregistered reward or a non-finite weight."""
    for name, w in weights.items():
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))}")
        if not np.isfinite(w):
            raise ValueError(f"reward {name!r} has weight {w}")


def score(
    texts: Sequence[str], prompts: Sequence[RLPrompt], weights: Mapping[str, float]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total float32[N], {name: float32[N], NaN where the reward does not apply}) of N
    completions, `texts[i]` answering `prompts[i]`; total = sum of weight x reward (None: 0)."""
    check_weights(weights)
    parts = {}
    for name in weights:
        values = [REWARDS[name](t, p) for t, p in zip(texts, prompts, strict=True)]
        parts[name] = np.asarray([np.nan if v is None else v for v in values], np.float32)
    total = np.zeros(len(texts), np.float32)
    for name, w in weights.items():
        total += np.float32(w) * np.nan_to_num(parts[name], nan=0.0)
    return total, parts
