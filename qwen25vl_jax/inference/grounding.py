"""Grounding output: parse the model's JSON boxes and points, map them to the original image,
clip them to it, and draw them.

Qwen2.5-VL grounds in absolute pixel coordinates of the *resized* image it saw (the
smart_resize size, `grid_hw * patch_size`), e.g.

    ```json
    [{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, {"point_2d": [x, y], "label": "eye"}]
    ```

Model output is untrusted text: truncated JSON (the token budget ran out), prose around the
fence, stray fields, wrong arities. Parsing never raises; it returns what it could read plus
one human-readable message per problem.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from qwen25vl_jax.data.vision import scale_boxes

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_OPEN = re.compile(r"[\[{]")
_KEY = re.compile(r"\"(?:bbox_2d|point_2d)\"")
_KEYS = {"bbox_2d": ("bbox", 4), "point_2d": ("point", 2)}


@dataclasses.dataclass(frozen=True)
class Detection:
    """kind "bbox": coords (x1, y1, x2, y2); kind "point": coords (x, y); pixels, float."""

    kind: Literal["bbox", "point"]
    coords: tuple[float, ...]
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Grounding:
    """detections, and `problems`: one message per thing that could not be read (empty = ok)."""

    detections: list[Detection]
    problems: list[str]


def _blobs(text: str) -> list[str]:
    """The JSON candidates: the body of every ```json fence (an unclosed one runs to the end),
    else the whole text."""
    return [m.group(1) for m in _FENCE.finditer(text)] or [text]


def _objects(value: Any) -> list[dict]:
    """Every dict holding `bbox_2d` or `point_2d`, depth first (lists, and dicts of lists)."""
    if isinstance(value, dict):
        if any(k in value for k in _KEYS):
            return [value]
        return [o for v in value.values() for o in _objects(v)]
    if isinstance(value, list):
        return [o for v in value for o in _objects(v)]
    return []


def _scan(blob: str) -> tuple[list[dict], list[tuple[int, int]]]:
    """Decodes every JSON value starting at a '[' or '{' that parses, left to right, skipping
    what a decoded value covers. A list holding one malformed item fails as a whole, and its
    well-formed objects are then read one by one. Returns the objects and the decoded spans."""
    decoder, objects, spans, i = json.JSONDecoder(), [], [], 0
    while (m := _OPEN.search(blob, i)) is not None:
        try:
            value, end = decoder.raw_decode(blob, m.start())
        except json.JSONDecodeError:
            i = m.start() + 1
            continue
        objects += _objects(value)
        spans.append((m.start(), end))
        i = end
    return objects, spans


def _detection(obj: dict, n: int, problems: list[str]) -> Detection | None:
    key = next(k for k in _KEYS if k in obj)
    kind, arity = _KEYS[key]
    raw, label = obj[key], obj.get("label")
    ok = isinstance(raw, list) and len(raw) == arity
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    ok = ok and all(np.isfinite(v) for v in raw)
    if not ok:
        problems.append(f"object {n}: {key} must be {arity} numbers, got {raw!r}; skipped")
        return None
    return Detection(kind, tuple(float(v) for v in raw), None if label is None else str(label))


def parse_grounding(text: str) -> Grounding:
    """Reads boxes and points from model output (bare JSON, possibly amid prose, inside ```json
    fences, or truncated). Never raises: what cannot be read is reported in `problems`."""
    problems: list[str] = []
    objects: list[dict] = []
    for blob in _blobs(text):
        blob = _TRAILING_COMMA.sub(r"\1", blob)  # a common slip, harmless to repair
        found, spans = _scan(blob)
        objects += found
        lost = [
            m.start() for m in _KEY.finditer(blob) if not any(a <= m.start() < b for a, b in spans)
        ]
        if lost:
            tail = blob.rstrip()
            why = "malformed" if tail.endswith(("]", "}")) else "incomplete (truncated answer?)"
            near = blob[lost[0] : lost[0] + 40].replace("\n", " ")
            problems.append(
                f"{len(lost)} object(s) could not be read, the JSON is {why}, near {near!r}"
            )
    detections = [d for n, o in enumerate(objects) if (d := _detection(o, n, problems))]
    if not objects and not problems:
        problems.append("no 'bbox_2d' or 'point_2d' object found in the answer")
    return Grounding(detections, problems)


def map_to_original(
    detections: Sequence[Detection], resized_hw: tuple[int, int], original_hw: tuple[int, int]
) -> list[Detection]:
    """From the resized image's pixels (what the model saw) to the original image's."""
    return [
        dataclasses.replace(
            d, coords=tuple(scale_boxes(np.asarray(d.coords), resized_hw, original_hw).tolist())
        )
        for d in detections
    ]


def clip_to_image(
    detections: Sequence[Detection], hw: tuple[int, int], problems: list[str] | None = None
) -> list[Detection]:
    """Clips x to [0, W] and y to [0, H] and orders box corners (x1 <= x2, y1 <= y2); drops
    boxes left with no area (appending a message to `problems` when given)."""
    h, w = hw
    out = []
    for d in detections:
        c = np.asarray(d.coords, np.float64).reshape(-1, 2)
        c = np.clip(c, 0.0, [w, h])
        if d.kind == "bbox":
            c = np.stack([c.min(0), c.max(0)])
            if (c[1] - c[0] <= 0).any():
                if problems is not None:
                    problems.append(f"box {d.coords} ({d.label}) has no area inside the image")
                continue
        out.append(dataclasses.replace(d, coords=tuple(c.reshape(-1).tolist())))
    return out


def box_iou(a, b) -> float:
    """IoU of two (x1, y1, x2, y2) boxes; 0 when either has no area."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def ground(text: str, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> Grounding:
    """parse -> map from the resized to the original image -> clip to it."""
    parsed = parse_grounding(text)
    problems = list(parsed.problems)
    mapped = map_to_original(parsed.detections, resized_hw, original_hw)
    return Grounding(clip_to_image(mapped, original_hw, problems), problems)


_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def draw_detections(image: Image.Image | np.ndarray, detections: Sequence[Detection]):
    """A copy of `image` (RGB) with boxes, points and their labels drawn; returns a PIL image."""
    img = Image.fromarray(np.asarray(image)) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    size = max(img.size)
    width, radius = max(2, size // 300), max(3, size // 120)
    font = ImageFont.load_default(size=max(12, size // 50))
    for i, d in enumerate(detections):
        color = _COLORS[i % len(_COLORS)]
        if d.kind == "bbox":
            x1, y1, x2, y2 = d.coords
            draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
            anchor = (x1, y1)
        else:
            x, y = d.coords
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius], fill=color, outline="white"
            )
            anchor = (x + radius, y - radius)
        if d.label:
            left, top, right, bottom = draw.textbbox(anchor, d.label, font=font)
            dy = min(bottom - top + 2, anchor[1])  # above the box, unless at the top edge
            box = (left, top - dy, right + 4, bottom - dy + 2)
            draw.rectangle(box, fill=color)
            draw.text((anchor[0] + 2, anchor[1] - dy), d.label, fill="white", font=font)
    return img
