"""Training records (JSONL or ArrayRecord) -> `Sample`.

A record is one JSON object in either of the formats users have:

* LLaMA-Factory / OpenAI style: ``{"messages": [{"role": "user", "content": "<image>What?"},
  {"role": "assistant", "content": "..."}], "images": ["a.jpg"], "videos": ["v.mp4"]}``;
* ShareGPT / Qwen-VL finetune style: ``{"conversations": [{"from": "human", "value": "<image>..."},
  {"from": "gpt", "value": "..."}], "image": "a.jpg"}`` (``"images"`` lists work too).

``<image>`` / ``<video>`` placeholders become ``{"type": "image"}`` / ``{"type": "video"}`` items
in order and take the media of ``images`` / ``videos`` in order. Content may also be a list of
structured items; an item ``{"type": "image", "image": "x.jpg"}`` carries its own path. Paths are
relative to ``media_root`` unless absolute. A video entry is a path or ``{"path": ..., "fps": 1,
"start": 0.5, "end": 3.0, "nframes": 8}``. Optional keys: ``"system"`` (a system prompt) and
``"id"`` (shown in error messages). Roles: system, user / human, assistant / gpt.

Grounding: boxes ``"bbox_2d": [x1, y1, x2, y2]`` and points ``"point_2d": [x, y]`` in the text refer
to the last image shown before that text (the record's first image if none is). With
``ground_coords="original"`` they are given in pixels of the original image and are rescaled
to the resized image the model sees (Qwen2.5-VL grounds in absolute resized pixels).

Every failure raises `RecordError(record_id, reason, detail)`; its message names the record
(``file:line`` for JSONL, ``file#index`` for ArrayRecord) and one of `REASONS`. The files are
read by `record_sources.RecordSource`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from PIL import Image

from qwen25vl_jax.cli_errors import InputError
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.media import Media, image_media, video_media
from qwen25vl_jax.data.sample import Sample, encode_sample
from qwen25vl_jax.data.video import (
    FPS,
    FPS_MAX_FRAMES,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
    decode_video,
)
from qwen25vl_jax.data.vision import MAX_PIXELS, MIN_PIXELS, scale_boxes

REASONS = (
    "malformed",  # not JSON, wrong schema, bad grounding list, vision token in text
    "unknown_role",
    "empty_reply",  # an empty assistant turn, or no assistant turn at all
    "placeholder_mismatch",  # <image>/<video> count != number of media given
    "missing_media",
    "corrupt_media",  # undecodable file, or a size smart_resize rejects
    "too_long",  # no bucket holds it (and truncation is off or impossible); see pipeline.py
)
_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
_PLACEHOLDER = re.compile(r"(<image>|<video>)")
_COORDS = re.compile(r'("(bbox_2d|point_2d)"\s*:\s*)\[([^\[\]]*)\]')


class RecordError(InputError):
    """A record that cannot become a training sample. ``str()``: "record ID: REASON: detail"."""

    def __init__(self, record_id: str, reason: str, detail: str):
        super().__init__(record_id, reason, detail)  # args -> picklable across Grain workers
        self.record_id, self.reason, self.detail = record_id, reason, detail

    def __str__(self) -> str:
        return f"record {self.record_id}: {self.reason}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class RecordOptions:
    """How records become samples: media location, pixel budgets, video sampling, grounding."""

    media_root: str = ""
    ground_coords: Literal["original", "resized"] = "original"
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    video_fps: float = FPS
    video_min_pixels: int = VIDEO_MIN_PIXELS
    video_max_pixels: int = VIDEO_MAX_PIXELS
    video_total_pixels: int | None = VIDEO_TOTAL_PIXELS
    video_max_frames: int = FPS_MAX_FRAMES
    default_system: bool = True  # the template's "You are a helpful assistant." turn

    def __post_init__(self):
        if self.ground_coords not in ("original", "resized"):
            raise ValueError(f"ground_coords must be 'original' or 'resized': {self.ground_coords}")


@dataclasses.dataclass(frozen=True)
class MediaRef:
    """One image or video of a record: path as written, plus per-video options."""

    kind: Literal["image", "video"]
    path: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A parsed record: structured messages (as `encode_chat` takes) and media in order."""

    record_id: str
    messages: list[dict[str, Any]]
    media: tuple[MediaRef, ...]


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _media_ref(kind: str, entry: Any, rid: str) -> MediaRef:
    if isinstance(entry, str) and entry:
        return MediaRef(kind, entry)
    if isinstance(entry, Mapping) and isinstance(entry.get("path", entry.get(kind)), str):
        opts = {k: entry[k] for k in ("fps", "start", "end", "nframes") if k in entry}
        if kind == "image" and opts:
            raise RecordError(rid, "malformed", f"image options {sorted(opts)} are video-only")
        return MediaRef(kind, entry.get("path", entry.get(kind)), tuple(sorted(opts.items())))
    raise RecordError(rid, "malformed", f"{kind} entry must be a path or a dict: {entry!r}")


def parse_record(record: Any, record_id: str, *, require_reply: bool = True) -> Conversation:
    """A record (decoded JSON) -> `Conversation`. Raises RecordError (no media is opened).
    require_reply=False: a prompt without an assistant turn is accepted (RL prompts)."""
    rid = record_id
    if not isinstance(record, Mapping):
        raise RecordError(rid, "malformed", f"expected a JSON object, got {type(record).__name__}")
    if "id" in record:
        rid = f"{record_id} (id={record['id']})"
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list) or not turns:
        raise RecordError(rid, "malformed", "no non-empty 'messages' or 'conversations' list")
    listed = {
        k: [_media_ref(k, e, rid) for e in _as_list(record.get(f"{k}s", record.get(k)))]
        for k in ("image", "video")
    }
    used = {"image": 0, "video": 0}
    messages: list[dict[str, Any]] = []
    media: list[MediaRef] = []
    if isinstance(record.get("system"), str) and record["system"]:
        messages.append({"role": "system", "content": [{"type": "text", "text": record["system"]}]})
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise RecordError(rid, "malformed", f"turn {i} is not an object")
        role, content = turn.get("role", turn.get("from")), turn.get("content", turn.get("value"))
        if role not in _ROLES:
            raise RecordError(rid, "unknown_role", f"turn {i} has role {role!r}")
        role = _ROLES[role]
        raw_items = content if isinstance(content, list) else [content]
        items: list[dict[str, Any]] = []
        for item in raw_items:
            if isinstance(item, str):
                parts = [p for p in _PLACEHOLDER.split(item) if p]
                item_list = [
                    {"type": p[1:-1]} if _PLACEHOLDER.fullmatch(p) else {"type": "text", "text": p}
                    for p in parts
                ]
            elif isinstance(item, Mapping) and item.get("type") in ("text", "image", "video"):
                item_list = [dict(item)]
            else:
                raise RecordError(rid, "malformed", f"turn {i}: bad content item {item!r}")
            for it in item_list:
                kind = it["type"]
                if kind == "text":
                    if not isinstance(it.get("text"), str):
                        raise RecordError(rid, "malformed", f"turn {i}: text item without text")
                    items.append({"type": "text", "text": it["text"]})
                    continue
                if role == "assistant":
                    raise RecordError(rid, "malformed", f"turn {i}: {kind} in an assistant reply")
                if isinstance(it.get(kind), str):  # structured item with its own path
                    media.append(_media_ref(kind, it[kind], rid))
                else:
                    if used[kind] < len(listed[kind]):
                        media.append(listed[kind][used[kind]])
                    used[kind] += 1
                items.append({"type": kind})
        if role == "assistant" and not "".join(t.get("text", "") for t in items).strip():
            raise RecordError(rid, "empty_reply", f"turn {i} is an empty assistant reply")
        messages.append({"role": role, "content": items})
    for kind in ("image", "video"):
        if used[kind] != len(listed[kind]):
            raise RecordError(
                rid,
                "placeholder_mismatch",
                f"{used[kind]} <{kind}> placeholder(s) but {len(listed[kind])} {kind}(s) listed",
            )
    if require_reply and not any(m["role"] == "assistant" for m in messages):
        raise RecordError(rid, "empty_reply", "no assistant reply")
    return Conversation(rid, messages, tuple(media))


def rescale_grounding(text: str, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> str:
    """Rewrites every ``"bbox_2d": [x1, y1, x2, y2]`` / ``"point_2d": [x, y]`` in ``text`` from
    image size ``from_hw`` to ``to_hw`` (rounded to integer pixels). ValueError on a bad list."""

    def sub(m: re.Match) -> str:
        want = 4 if m.group(2) == "bbox_2d" else 2
        try:
            values = [float(v) for v in m.group(3).split(",")]
        except ValueError:
            raise ValueError(f"non-numeric {m.group(2)}: [{m.group(3)}]") from None
        if len(values) != want:
            raise ValueError(f"{m.group(2)} needs {want} numbers, got [{m.group(3)}]")
        scaled = np.rint(scale_boxes(np.asarray(values), from_hw, to_hw)).astype(int)
        return m.group(1) + "[" + ", ".join(str(v) for v in scaled) + "]"

    return _COORDS.sub(sub, text)


def load_image(path: str, rid: str) -> Image.Image:
    """The decoded image; RecordError "missing_media" / "corrupt_media" naming the record."""
    if not os.path.isfile(path):
        raise RecordError(rid, "missing_media", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBomb)
        raise RecordError(rid, "corrupt_media", f"cannot decode image {path}: {err}") from err


def resolve_media(root: str, path: str) -> str:
    """A record's media path: relative to ``root`` unless absolute."""
    return path if not root or os.path.isabs(path) else os.path.join(root, path)


def load_media(conv: Conversation, cfg: ModelConfig, options: RecordOptions) -> list[Media]:
    """Decodes and preprocesses the media of ``conv`` (in order) into `Media`."""
    out = []
    for ref in conv.media:
        path = resolve_media(options.media_root, ref.path)
        if ref.kind == "image":
            image = load_image(path, conv.record_id)
            try:
                out.append(
                    image_media(
                        image,
                        cfg.vision,
                        min_pixels=options.min_pixels,
                        max_pixels=options.max_pixels,
                    )
                )
            except ValueError as err:  # e.g. aspect ratio over 200
                raise RecordError(conv.record_id, "corrupt_media", f"image {path}: {err}") from err
            continue
        opts = dict(ref.options)
        if not os.path.isfile(path):
            raise RecordError(conv.record_id, "missing_media", f"video file not found: {path}")
        try:
            frames, fps = decode_video(
                path,
                fps=None if "nframes" in opts else opts.get("fps", options.video_fps),
                nframes=opts.get("nframes"),
                start_s=opts.get("start"),
                end_s=opts.get("end"),
                max_frames=options.video_max_frames,
            )
            out.append(
                video_media(
                    frames,
                    fps,
                    cfg.vision,
                    min_pixels=options.video_min_pixels,
                    max_pixels=options.video_max_pixels,
                    total_pixels=options.video_total_pixels,
                )
            )
        except Exception as err:  # VideoDecodeError, FFmpeg errors, no valid frame count
            raise RecordError(conv.record_id, "corrupt_media", f"video {path}: {err}") from err
    return out


def ground_messages(conv: Conversation, media: list[Media], patch_size: int) -> list[dict]:
    """Messages with grounding coordinates rescaled to the resized image they refer to."""
    images = [(m.original_hw, m.resized_hw(patch_size)) for m in media if m.kind == "image"]
    current, seen, messages = (images[0] if images else None), 0, []
    for message in conv.messages:
        content = []
        for item in message["content"]:
            if item["type"] == "image":
                current, seen = images[seen], seen + 1
            elif item["type"] == "text" and current is not None:
                try:
                    item = {"type": "text", "text": rescale_grounding(item["text"], *current)}
                except ValueError as err:
                    raise RecordError(conv.record_id, "malformed", str(err)) from err
            content.append(item)
        messages.append({"role": message["role"], "content": content})
    return messages


def decode_record(payload: bytes | str | Mapping, record_id: str) -> Any:
    """JSON bytes / text -> object (a Mapping passes through). RecordError on bad JSON."""
    if isinstance(payload, Mapping):
        return payload
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise RecordError(record_id, "malformed", f"invalid JSON: {err}") from err


def record_to_sample(
    payload: bytes | str | Mapping,
    record_id: str,
    *,
    cfg: ModelConfig,
    tokenizer: Any,
    options: RecordOptions = RecordOptions(),  # noqa: B008 (frozen)
) -> Sample:
    """One record -> `Sample` (input_ids int32[n], loss_mask bool[n], positions int32[3, n],
    media). Raises RecordError naming the record."""
    conv = parse_record(decode_record(payload, record_id), record_id)
    return conversation_sample(conv, load_media(conv, cfg, options), cfg, tokenizer, options)


def conversation_sample(
    conv: Conversation,
    media: list[Media],
    cfg: ModelConfig,
    tokenizer: Any,
    options: RecordOptions,
    *,
    upto: int | None = None,
) -> Sample:
    """A parsed record with its loaded media -> `Sample`, grounding rescaled as `options` say.
    upto: encode only the first `upto` messages, ending with the assistant header (a prompt).
    Raises RecordError "malformed" naming the record."""
    messages = conv.messages
    if options.ground_coords == "original":
        messages = ground_messages(conv, media, cfg.vision.patch_size)
    try:
        return encode_sample(
            cfg,
            tokenizer,
            messages[:upto],
            media,
            add_generation_prompt=upto is not None,
            default_system=options.default_system,
        )
    except ValueError as err:  # vision tokens written in the text, and the like
        raise RecordError(conv.record_id, "malformed", str(err)) from err
