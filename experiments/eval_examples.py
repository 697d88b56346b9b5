"""The questions of an evaluation JSONL: every assistant turn of a record (the training format,
`qwen25vl_jax/data/records.py`) is one `Example`, the turns before it its prompt, the turn its
truth (a box in original-image pixels, a count or seconds). `experiments/eval.py` generates and
scores the answers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments.metrics import BASELINES, parse_number
from qwen25vl_jax.cli_errors import InputError
from qwen25vl_jax.data.records import (
    Conversation,
    RecordError,
    RecordOptions,
    decode_record,
    load_image,
    parse_record,
    resolve_media,
)


@dataclasses.dataclass
class Example:
    """One question. conversation: the record up to the question (its messages are the prompt,
    its media those shown); truth: box (x1, y1, x2, y2) in original-image pixels, count or
    seconds; image_path / original_hw: the image the question is about (the last one shown)."""

    record_id: str
    task: str
    conversation: Conversation
    truth: tuple | float
    image_path: str | None = None
    original_hw: tuple[int, int] | None = None

    @property
    def prompt(self) -> list[dict]:
        return self.conversation.messages


def message_text(message) -> str:
    return "".join(it.get("text", "") for it in message["content"])


def media_problem(conv: Conversation, options: RecordOptions) -> RecordError | None:
    """Why a record's media cannot be used (a missing file, an image that does not decode, as
    a `RecordError` naming the record), or None. Videos are only checked to exist."""
    for ref in conv.media:
        path = resolve_media(options.media_root, ref.path)
        try:
            if ref.kind == "image":
                load_image(path, conv.record_id)
            elif not os.path.isfile(path):
                raise RecordError(conv.record_id, "missing_media", f"video file not found: {path}")
        except RecordError as err:
            return err
    return None


def load_examples(
    path: str,
    options: RecordOptions,
    max_samples: int | None = None,
    *,
    factor: int = 28,
    skipped: list | None = None,
) -> list[Example]:
    """The questions of a JSONL file (the first `max_samples` only). Truth boxes are read in the
    convention of `options.ground_coords` (resized: pixels of the image `smart_resize`d with
    `factor` = patch size x merge size and the image budgets) and mapped to original pixels.
    Given a ``skipped`` list, a record whose media are missing or do not decode is appended
    to it (a `RecordError` each) and left out. A malformed record raises `RecordError`."""
    from PIL import Image

    from qwen25vl_jax.data.vision import scale_boxes, smart_resize
    from qwen25vl_jax.inference.grounding import parse_grounding

    sizes: dict[str, tuple[int, int]] = {}
    out: list[Example] = []
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such evaluation file")
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    for line_no, line in lines:
        where = f"{path}:{line_no}"
        raw = decode_record(line, where)
        conv = parse_record(raw, where)
        problem = media_problem(conv, options) if skipped is not None else None
        if problem is not None:
            skipped.append(problem)
            continue
        for j, message in enumerate(conv.messages):
            if message["role"] != "assistant":
                continue
            if max_samples is not None and len(out) >= max_samples:
                return out
            answer, prompt = message_text(message), conv.messages[:j]
            shown = sum(it["type"] != "text" for m in prompt for it in m["content"])
            turn = dataclasses.replace(conv, messages=prompt, media=conv.media[:shown])
            images = [m.path for m in turn.media if m.kind == "image"]
            image = images[-1] if images else None
            if image and not os.path.isabs(image):
                image = os.path.join(options.media_root, image)
            video = any(m.kind == "video" for m in turn.media)
            task = raw.get("task") or (
                "grounding" if "bbox_2d" in answer else "timing" if video else "counting"
            )
            if task not in BASELINES:
                raise RecordError(conv.record_id, "malformed", f"unknown task {task!r}")
            if task != "grounding":
                truth = parse_number(answer)
                if truth is None:
                    raise RecordError(
                        conv.record_id, "malformed", f"{task} answer without a number: {answer!r}"
                    )
                out.append(Example(conv.record_id, task, turn, truth, image))
                continue
            found = [d for d in parse_grounding(answer).detections if d.kind == "bbox"]
            if not found or image is None:
                raise RecordError(
                    conv.record_id,
                    "malformed",
                    "grounding needs an image before "
                    f"the question and a box in the answer: {answer!r}",
                )
            if image not in sizes:
                with Image.open(image) as im:  # the header only
                    sizes[image] = (im.height, im.width)
            hw = sizes[image]
            written_hw = (
                hw
                if options.ground_coords == "original"
                else smart_resize(
                    *hw, factor=factor, min_pixels=options.min_pixels, max_pixels=options.max_pixels
                )
            )
            truth = tuple(scale_boxes(np.asarray(found[0].coords, float), written_hw, hw).tolist())
            out.append(Example(conv.record_id, task, turn, truth, image, hw))
    return out
