"""Records -> Sample: both JSONL formats, ArrayRecord, grounding rescale, each bad-record reason."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data import tokenizer as tokenizer_module
from qwen25vl_jax.data.chat import encode_chat
from qwen25vl_jax.data.record_sources import RecordSource, jsonl_to_array_record
from qwen25vl_jax.data.records import RecordError, RecordOptions, record_to_sample
from qwen25vl_jax.data.tokenizer import build_qwen_tokenizer, load_tokenizer, save_tokenizer_dir
from qwen25vl_jax.data.video import decode_video, preprocess_video, write_video
from qwen25vl_jax.data.vision import preprocess_image, scale_boxes, smart_resize

# The tiny model with the real special-token ids, so the real tokenizer's pads are media tokens.
CFG = dataclasses.replace(
    ModelConfig.tiny(), image_token_id=151655, video_token_id=151656,
    vision_start_token_id=151652, vision_end_token_id=151653,
)  # fmt: skip
OPTS = RecordOptions(max_pixels=112 * 112, video_min_pixels=56 * 56, video_max_pixels=56 * 56)


def cached_tokenizer(request):
    """The real Qwen tokenizer, built once and kept in pytest's cache (keyed by the builder's
    source), so each test module loads it in ~1 s instead of building it in ~3-9 s."""
    key = hashlib.sha256(Path(tokenizer_module.__file__).read_bytes()).hexdigest()[:16]
    try:
        directory = Path(request.config.cache.mkdir(f"qwen_tokenizer_{key}"))
    except AttributeError:  # cache plugin disabled
        return build_qwen_tokenizer()
    if not (directory / "tokenizer.json").is_file():
        save_tokenizer_dir(build_qwen_tokenizer(), directory)
    return load_tokenizer(directory)


@pytest.fixture(scope="module")
def tok(request):
    return cached_tokenizer(request)


def write_image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def samples_equal(a, b) -> None:
    """Field by field (a Sample's media: each Media field by field)."""
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "media":
            assert len(x) == len(y), f.name
            for mx, my in zip(x, y, strict=True):
                samples_equal(mx, my)
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_image(root / "a.png", 100, 200, seed=1)
    write_image(root / "b.jpg", 84, 60, seed=2)
    frames = np.random.default_rng(3).integers(0, 256, (8, 56, 84, 3), dtype=np.uint8)
    write_video(root / "v.mp4", frames, fps=4.0, options={"crf": "0"})
    (root / "bad.png").write_bytes(b"not an image at all")
    (root / "bad.mp4").write_bytes(b"\x00" * 100)
    return root


def test_messages_format_end_to_end(tok, media):
    """Placeholders become media items in order (video before image here), each media is
    preprocessed exactly as the data functions do, and the tokens and loss mask are those of
    encode_chat on the structured conversation."""
    record = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "<video>Then <image> what changed?"},
            {"role": "assistant", "content": "Colours."},
            {"role": "user", "content": "And <image>?"},
            {"role": "assistant", "content": "Nothing."},
        ],
        "images": ["a.png", str(media / "b.jpg")],  # relative to media_root, or absolute
        "videos": [{"path": "v.mp4", "fps": 2.0}],
    }
    opts = dataclasses.replace(OPTS, media_root=str(media))
    s = record_to_sample(json.dumps(record).encode(), "r:1", cfg=CFG, tokenizer=tok, options=opts)
    assert tuple(m.kind for m in s.media) == ("video", "image", "image")

    pv_a, g_a = preprocess_image(Image.open(media / "a.png"), max_pixels=112 * 112)
    pv_b, g_b = preprocess_image(Image.open(media / "b.jpg"), max_pixels=112 * 112)
    frames, fps = decode_video(media / "v.mp4", fps=2.0)
    pv_v, g_v, _ = preprocess_video(frames, fps=fps, min_pixels=56 * 56, max_pixels=56 * 56,
                                    total_pixels=OPTS.video_total_pixels)  # fmt: skip
    np.testing.assert_array_equal(s.grids, np.stack([g_v, g_a, g_b]))
    patches = np.concatenate([m.patches for m in s.media])
    np.testing.assert_array_equal(patches, np.concatenate([pv_v, pv_a, pv_b]))

    structured = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Then "},
                                     {"type": "image"}, {"type": "text", "text": " what changed?"},
                                     ]},
        {"role": "assistant", "content": "Colours."},
        {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "image"},
                                     {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": "Nothing."},
    ]  # fmt: skip
    ids, mask = encode_chat(tok, structured, image_token_counts=[g_a.prod() // 4, g_b.prod() // 4],
                            video_token_counts=[g_v.prod() // 4])  # fmt: skip
    np.testing.assert_array_equal(s.input_ids, ids)
    np.testing.assert_array_equal(s.loss_mask, mask)
    assert tok.decode(s.input_ids[s.loss_mask].tolist(), skip_special_tokens=False) == (
        "Colours.<|im_end|>Nothing.<|im_end|>"
    )


def test_sharegpt_format_equals_messages_format(tok, media):
    """The ShareGPT / Qwen finetune layout (conversations, from/value, single "image") gives the
    very same sample as the messages layout."""
    opts = dataclasses.replace(OPTS, media_root=str(media))
    a = {"messages": [{"role": "user", "content": "<image>\nDescribe."},
                      {"role": "assistant", "content": "Noise."}], "images": ["a.png"]}  # fmt: skip
    b = {"conversations": [{"from": "human", "value": "<image>\nDescribe."},
                           {"from": "gpt", "value": "Noise."}], "image": "a.png"}  # fmt: skip
    sa = record_to_sample(a, "a", cfg=CFG, tokenizer=tok, options=opts)
    sb = record_to_sample(b, "b", cfg=CFG, tokenizer=tok, options=opts)
    samples_equal(sa, sb)
    assert tuple(m.kind for m in sa.media) == ("image",) and sa.num_tokens > 20


def test_sources_jsonl_and_arrayrecord(tmp_path):
    """JSONL ids are file:line (blank lines skipped, last line without newline read);
    ArrayRecord keeps the bytes, ids are file#index; several files concatenate."""
    lines = ['{"a": 1}', "", '{"b": 2}', "   ", '{"c": "' + "x" * 40 + '"}']
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines))  # no trailing newline
    src = RecordSource(path)
    assert len(src) == 3
    assert [src[i][0] for i in range(3)] == [f"{path}:1", f"{path}:3", f"{path}:5"]
    assert [src[i][1] for i in range(3)] == [
        lines[0].encode(),
        lines[2].encode(),
        lines[4].encode(),
    ]
    ar = tmp_path / "d.arrayrecord"
    assert jsonl_to_array_record(path, ar) == 3
    both = RecordSource([str(ar), str(path)])
    assert len(both) == 6
    assert both[1] == (f"{ar}#1", lines[2].encode())
    assert both[3] == src[0]
    with pytest.raises(IndexError):
        both[6]
    (tmp_path / "empty.jsonl").write_text("")
    assert len(RecordSource(tmp_path / "empty.jsonl")) == 0


def test_grounding_rescaled_to_resized_image(tok, media):
    """Boxes and points in original pixels are mapped to the resized image the text refers to
    (the last image shown before it); with ground_coords="resized" the text is left alone."""
    # a.png is 100 x 200 (h, w), b.jpg 84 x 60; resized sizes from smart_resize.
    ra = smart_resize(100, 200, max_pixels=112 * 112)
    rb = smart_resize(84, 60, max_pixels=112 * 112)
    assert ra != (100, 200) and rb != (84, 60)
    record = {
        "messages": [
            {"role": "user", "content": "<image>Find the cat."},
            {"role": "assistant", "content": '{"bbox_2d": [10, 20, 150, 90], "label": "cat"}'},
            {"role": "user", "content": '<image>And the point "point_2d": [30, 40]?'},
            {"role": "assistant", "content": '[{"point_2d": [59, 83]}]'},
        ],
        "images": ["a.png", "b.jpg"],
    }
    opts = dataclasses.replace(OPTS, media_root=str(media))
    s = record_to_sample(record, "g", cfg=CFG, tokenizer=tok, options=opts)
    text = tok.decode(s.input_ids.tolist(), skip_special_tokens=False)
    box = np.rint(scale_boxes(np.array([10, 20, 150, 90]), (100, 200), ra)).astype(int)
    p1 = np.rint(scale_boxes(np.array([30, 40]), (84, 60), rb)).astype(int)
    p2 = np.rint(scale_boxes(np.array([59, 83]), (84, 60), rb)).astype(int)
    fmt = lambda v: "[" + ", ".join(map(str, v)) + "]"
    assert f'"bbox_2d": {fmt(box)}, "label": "cat"' in text
    assert f'"point_2d": {fmt(p1)}?' in text
    assert f'[{{"point_2d": {fmt(p2)}}}]' in text
    assert fmt(box) != "[10, 20, 150, 90]"

    kept = record_to_sample(record, "g", cfg=CFG, tokenizer=tok,
                            options=dataclasses.replace(opts, ground_coords="resized"))  # fmt: skip
    kept_text = tok.decode(kept.input_ids.tolist(), skip_special_tokens=False)
    assert '"bbox_2d": [10, 20, 150, 90]' in kept_text and '"point_2d": [59, 83]' in kept_text

    record["messages"][1]["content"] = '{"bbox_2d": [10, 20, 150]}'
    with pytest.raises(RecordError, match="malformed: bbox_2d needs 4 numbers"):
        record_to_sample(record, "g", cfg=CFG, tokenizer=tok, options=opts)


def _user(content: str, reply: str = "ok") -> dict:
    return {"messages": [{"role": "user", "content": content},
                         {"role": "assistant", "content": reply}]}  # fmt: skip


BAD_RECORDS = [
    ("malformed", "{not json", "invalid JSON"),
    ("malformed", {"messages": []}, "no non-empty 'messages'"),
    ("malformed", _user("<|image_pad|> sneaky"), "vision token"),
    ("unknown_role", {"conversations": [{"from": "bot", "value": "hi"}]}, "role 'bot'"),
    ("empty_reply", _user("hi", reply="  \n"), "empty assistant reply"),
    ("empty_reply", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant reply"),
    ("placeholder_mismatch", {**_user("<image><image>"), "images": ["a.png"]},
     "2 <image> placeholder(s) but 1 image(s)"),
    ("placeholder_mismatch", {**_user("no placeholder"), "videos": ["v.mp4"]},
     "0 <video> placeholder(s) but 1 video(s)"),
    ("missing_media", {**_user("<image>"), "images": ["nope.png"]}, "image file not found"),
    ("missing_media", {**_user("<video>"), "videos": ["nope.mp4"]}, "video file not found"),
    ("corrupt_media", {**_user("<image>"), "images": ["bad.png"]}, "cannot decode image"),
    ("corrupt_media", {**_user("<video>"), "videos": ["bad.mp4"]}, "bad.mp4"),
]  # fmt: skip


@pytest.mark.parametrize("reason,record,detail", BAD_RECORDS)
def test_bad_record_names_record_and_reason(tok, media, tmp_path, reason, record, detail):
    """Every bad record raises RecordError whose message is "record <file>:<line>: <reason>:
    <detail>" (line 2: a good record comes first)."""
    good = {**_user("<image>fine"), "images": ["a.png"]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    src = RecordSource(path)
    opts = dataclasses.replace(OPTS, media_root=str(media))
    record_to_sample(src[0][1], src[0][0], cfg=CFG, tokenizer=tok, options=opts)  # fine
    with pytest.raises(RecordError) as info:
        record_to_sample(src[1][1], src[1][0], cfg=CFG, tokenizer=tok, options=opts)
    err = info.value
    assert (err.record_id, err.reason) == (f"{path}:2", reason)
    assert str(err).startswith(f"record {path}:2: {reason}: ")
    assert detail in str(err)


def test_record_id_field_in_message(tok):
    with pytest.raises(RecordError, match=r"record f.jsonl:7 \(id=abc\): unknown_role"):
        record_to_sample({"id": "abc", "messages": [{"role": "tool", "content": "x"}]},
                         "f.jsonl:7", cfg=CFG, tokenizer=tok)  # fmt: skip
