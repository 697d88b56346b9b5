"""The main job's synthetic data: every answer is what the written media show."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from experiments import synthetic_tasks as st
from qwen25vl_jax.data.video import decode_video


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    paths = st.generate(str(out), num_train=40, num_eval=20, seed=3)
    recs = {}
    for split in ("train", "eval"):
        with open(paths[split]) as f:
            recs[split] = [json.loads(ln) for ln in f]
    return out, recs


def _foreground(path) -> np.ndarray:
    """bool[h, w]: pixels that are not the (uniform) background colour of the corner."""
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return np.abs(px - px[0, 0]).sum(-1) > 0


def test_splits_mix_and_format(data):
    _, recs = data
    for split, n in (("train", 40), ("eval", 20)):
        tasks = collections.Counter(r["task"] for r in recs[split])
        assert set(tasks) == set(st.TASKS) and sum(tasks.values()) == n
        for r in recs[split]:
            (user, assistant) = r["messages"]  # one question per record, media first
            assert user["content"].startswith("<video>" if r["task"] == "timing" else "<image>")
            assert assistant["role"] == "assistant"
    ids = [{r["id"] for r in recs[s]} for s in ("train", "eval")]
    assert not ids[0] & ids[1]


def test_grounding_box_is_the_drawn_shape(data):
    out, recs = data
    grounding = [r for r in recs["train"] + recs["eval"] if r["task"] == "grounding"]
    assert grounding
    for r in grounding:
        answer = json.loads(r["messages"][1]["content"])
        assert answer["label"] in r["messages"][0]["content"]
        fg = _foreground(out / r["images"][0])
        h, w = fg.shape
        assert 160 <= h <= 640 and 160 <= w <= 640
        ys, xs = np.nonzero(fg)
        # the box is exclusive at x2/y2: x2 - 1 is the last shape column
        assert answer["bbox_2d"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], r["id"]


def test_counting_answer_is_the_number_of_shapes(data):
    out, recs = data
    counting = [r for r in recs["train"] + recs["eval"] if r["task"] == "counting"]
    assert counting
    for r in counting:
        _, found = ndimage.label(_foreground(out / r["images"][0]))
        assert found == int(r["messages"][1]["content"]), r["id"]


def test_timing_answer_is_the_second_the_dot_turns_red(data):
    out, recs = data
    timing = [r for r in recs["train"] + recs["eval"] if r["task"] == "timing"]
    assert timing
    for r in timing:
        video = r["videos"][0]
        frames, fps = decode_video(out / video["path"], fps=video["fps"])
        assert fps == video["fps"] and len(frames) in st.VIDEO_FRAMES
        f = frames.astype(int)
        red = ((f[..., 0] > 150) & (f[..., 1] < 90) & (f[..., 2] < 90)).sum((1, 2)) > 20
        first = int(np.argmax(red))
        assert red[first:].all() and not red[:first].any(), r["id"]
        second = int(r["messages"][1]["content"])
        assert first == second * video["fps"] and 1 <= second <= st.MAX_CHANGE_SECOND
        assert first % 2 == 0  # the change starts a temporal patch of the ViT
