"""Qwen2.5-VL ChatML: the official chat template, a pure-Python renderer, and SFT tokenization.

Messages use the structured format of the Qwen2.5-VL processor:

    [{"role": "system" | "user" | "assistant",
      "content": str | [{"type": "text", "text": str}, {"type": "image"}, {"type": "video"}, ...]}]

`render_chat` reproduces `QWEN25_VL_CHAT_TEMPLATE` (the `chat_template` of
Qwen/Qwen2.5-VL-7B-Instruct's `chat_template.json`, identical to the one in transformers'
Qwen2-VL processor tests) character for character. `encode_chat` turns a conversation into
`input_ids` with every `<|image_pad|>` / `<|video_pad|>` expanded to its number of merged
vision tokens, plus the supervised-loss mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Verbatim from Qwen2.5-VL-7B-Instruct (revision cc594898137f460bfe9f0759e9844b3ce807cfb5);
# sha256(json.dumps(template)) = 4df95d05455c2a6f762616492bba63d0f9bef904ef47daabad35f5715d6d2e4e
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Placeholders whose count must match the vision inputs: never accepted inside message text.
_VISION_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, "<|vision_pad|>")

SpanKind = Literal["text", "special", "image", "video"]


@dataclass(frozen=True)
class _Span:
    """A piece of the rendered conversation: plain text, one special token, or a vision pad."""

    text: str
    kind: SpanKind
    loss: bool  # True on assistant reply text and its closing <|im_end|>
    message: int  # index of the message it belongs to (-1: generation prompt)


def _item_kind(item: Any, where: str) -> Literal["image", "video", "text"]:
    # Same tests, in the same order, as the template's if / elif chain.
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: content items must be dicts, got {type(item).__name__}")
    if item.get("type") == "image" or "image" in item or "image_url" in item:
        return "image"
    if item.get("type") == "video" or "video" in item:
        return "video"
    if "text" in item:
        if not isinstance(item["text"], str):
            raise ValueError(f"{where}: 'text' must be a str, got {type(item['text']).__name__}")
        return "text"
    # The template would silently drop this item; that is almost always a data bug.
    raise ValueError(f"{where}: content item {dict(item)!r} is not text, image or video")


def _spans(
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    default_system: bool,
    add_vision_id: bool,
) -> list[_Span]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role', 'content'} dicts")
    if not messages:
        raise ValueError("messages is empty")
    spans: list[_Span] = []
    n_images = n_videos = 0
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: expected a dict with 'role' and 'content', got {message!r}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; expected one of {ROLES}")
        if i == 0 and role != "system" and default_system:
            spans += [
                _Span(IM_START, "special", False, i),
                _Span(f"system\n{DEFAULT_SYSTEM_MESSAGE}", "text", False, i),
                _Span(IM_END, "special", False, i),
                _Span("\n", "text", False, i),
            ]
        reply = role == "assistant"
        spans += [_Span(IM_START, "special", False, i), _Span(f"{role}\n", "text", False, i)]
        if isinstance(content, str):
            spans.append(_Span(content, "text", reply, i))
        elif isinstance(content, Sequence) and not isinstance(content, bytes):
            for j, item in enumerate(content):
                kind = _item_kind(item, f"{where} item {j}")
                if kind == "text":
                    spans.append(_Span(item["text"], "text", reply, i))
                    continue
                if kind == "image":
                    n_images += 1
                    label, pad = f"Picture {n_images}: ", IMAGE_PAD
                else:
                    n_videos += 1
                    label, pad = f"Video {n_videos}: ", VIDEO_PAD
                if add_vision_id:
                    spans.append(_Span(label, "text", False, i))
                spans += [
                    _Span(VISION_START, "special", False, i),
                    _Span(pad, kind, False, i),
                    _Span(VISION_END, "special", False, i),
                ]
        else:
            raise ValueError(f"{where}: content must be a str or a list of items")
        spans += [_Span(IM_END, "special", reply, i), _Span("\n", "text", False, i)]
    if add_generation_prompt:
        spans += [_Span(IM_START, "special", False, -1), _Span("assistant\n", "text", False, -1)]
    return spans


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    default_system: bool = True,
    add_vision_id: bool = False,
) -> str:
    """Render `messages` exactly like `QWEN25_VL_CHAT_TEMPLATE` under Jinja.

    Args:
      messages: non-empty list of {"role", "content"} dicts (format in the module docstring).
      add_generation_prompt: append "<|im_start|>assistant\\n".
      default_system: when the first message is not a system message, prepend the default
        "You are a helpful assistant." system turn, as the template does. False departs from
        the template and leaves it out.
      add_vision_id: prefix each image / video with "Picture k: " / "Video k: " (template flag).
    Raises:
      ValueError: unknown role, malformed message, or a content item that is not text, image
        or video (the template would drop it silently).
    """
    spans = _spans(
        messages,
        add_generation_prompt=add_generation_prompt,
        default_system=default_system,
        add_vision_id=add_vision_id,
    )
    return "".join(s.text for s in spans)


def _check_counts(name: str, counts: Sequence[int], expected: int) -> list[int]:
    counts = list(counts)
    if len(counts) != expected:
        raise ValueError(
            f"{name} has {len(counts)} entries but the messages contain {expected} "
            f"{name.split('_')[0]} placeholder(s)"
        )
    for k, c in enumerate(counts):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"{name}[{k}] must be a positive int, got {c!r}")
    return [int(c) for c in counts]


def encode_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    image_token_counts: Sequence[int],
    video_token_counts: Sequence[int],
    add_generation_prompt: bool = False,
    default_system: bool = True,
    add_vision_id: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a conversation for the model and for supervised fine-tuning.

    Args:
      tokenizer: a `tokenizers.Tokenizer` holding the Qwen2.5-VL special tokens.
      messages: as for `render_chat`.
      image_token_counts: for each image, in order of appearance, its number of LLM tokens
        (t * h * w / 4 for a grid_thw of (t, h, w) patches; the 2x2 merger divides by 4).
      video_token_counts: the same for each video.
      add_generation_prompt, default_system, add_vision_id: as for `render_chat`.
    Returns:
      input_ids: int32[L]; equal to tokenizing `render_chat(...)` in one piece after replacing
        the k-th `<|image_pad|>` (`<|video_pad|>`) by image_token_counts[k]
        (video_token_counts[k]) copies of itself.
      loss_mask: bool[L]; True exactly on the tokens of assistant replies and their closing
        `<|im_end|>`, False on the `<|im_start|>assistant\\n` header and on the "\\n" after
        `<|im_end|>`. A reply starting with a newline shares its first token with the header's
        "\\n" (BPE merges "\\n\\n"); such a token carries reply text and counts as reply.
    Raises:
      ValueError: unknown role, empty assistant reply, image / video in an assistant message,
        vision tokens inside message text, or counts that do not match the placeholders.
    """
    spans = _spans(
        messages,
        add_generation_prompt=add_generation_prompt,
        default_system=default_system,
        add_vision_id=add_vision_id,
    )
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if any(s.message == i and s.kind in ("image", "video") for s in spans):
            raise ValueError(f"message {i}: assistant messages must be text only")
        if not any(s.text for s in spans if s.message == i and s.loss and s.kind == "text"):
            raise ValueError(f"message {i}: empty assistant reply")
    for s in spans:
        if s.kind == "text" and any(t in s.text for t in _VISION_TOKENS):
            raise ValueError(
                f"message {s.message}: text contains a vision token ({', '.join(_VISION_TOKENS)});"
                " use {'type': 'image'} / {'type': 'video'} items instead"
            )
    counts = {
        "image": iter(
            _check_counts(
                "image_token_counts", image_token_counts, sum(s.kind == "image" for s in spans)
            )
        ),
        "video": iter(
            _check_counts(
                "video_token_counts", video_token_counts, sum(s.kind == "video" for s in spans)
            )
        ),
    }

    special_ids = {}
    for text in {s.text for s in spans if s.kind != "text"}:
        token_id = tokenizer.token_to_id(text)
        if token_id is None:
            raise ValueError(f"tokenizer has no token {text!r}; build it with build_qwen_tokenizer")
        special_ids[text] = token_id

    # Consecutive text spans form one run between special tokens; each run is tokenized in one
    # piece, exactly as the full string would be (added tokens split the text first), and the
    # loss of each token comes from the characters it covers.
    pieces: list[tuple[str, Any]] = []  # ("ids", (ids, mask)) or ("run", (text, loss_chars))
    run_text: list[str] = []
    run_loss: list[np.ndarray] = []
    for s in spans + [None]:
        if s is not None and s.kind == "text":
            run_text.append(s.text)
            run_loss.append(np.full(len(s.text), s.loss, dtype=bool))
            continue
        if run_text:
            pieces.append(("run", ("".join(run_text), np.concatenate(run_loss))))
            run_text, run_loss = [], []
        if s is None:
            break
        n = next(counts[s.kind]) if s.kind in counts else 1
        pieces.append(("ids", ([special_ids[s.text]] * n, [s.loss] * n)))

    runs = [p for kind, p in pieces if kind == "run"]
    encodings = iter(tokenizer.encode_batch([t for t, _ in runs], add_special_tokens=False))
    ids: list[int] = []
    mask: list[bool] = []
    for kind, payload in pieces:
        if kind == "ids":
            ids += payload[0]
            mask += payload[1]
            continue
        text, loss_chars = payload
        enc = next(encodings)
        # cum[k] = number of loss characters before position k: overlap test in O(1).
        cum = np.concatenate([[0], np.cumsum(loss_chars)])
        for token_id, (start, end) in zip(enc.ids, enc.offsets, strict=True):
            end = max(end, min(start + 1, len(text)))
            ids.append(token_id)
            mask.append(bool(cum[end] - cum[start] > 0))
    return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)
