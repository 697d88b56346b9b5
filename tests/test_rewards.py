"""Rewards on crafted completions (malformed JSON, boxes outside the image, extra text), the
registry and weighted sum, and RL prompt records (truth in resized pixels, one-line errors)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qwen25vl_jax.data.records import RecordError
from qwen25vl_jax.data.rl_prompts import RLPrompt, read_rl_prompts, rl_prompt
from qwen25vl_jax.train import rewards as R
from tests.test_records import CFG, OPTS, cached_tokenizer, write_image, write_jsonl

BOX = (20.0, 10.0, 60.0, 50.0)  # in the 112 x 84 (w x h) resized image
GROUND = RLPrompt("g", "grounding", None, {"bbox_2d": BOX}, image_hw=(84, 112))
COUNT = RLPrompt("c", "counting", None, {"count": 3})
TIME = RLPrompt("t", "timing", None, {"second": 2.0}, duration=8.0)
ANSWER = RLPrompt("a", "answer", None, {"answer": "Yes please"})


def box(b, label="red circle") -> str:
    return json.dumps({"bbox_2d": list(b), "label": label})


@pytest.mark.parametrize(
    "text, fmt, iou",
    [
        (box(BOX), 1.0, 1.0),
        (f"```json\n[{box(BOX)}]\n```", 1.0, 1.0),  # fenced list: the model's usual form
        (box((40, 10, 80, 50)), 1.0, (20 * 40) / (40 * 40 * 2 - 20 * 40)),  # half overlap
        ("The box is " + box(BOX), 0.0, 1.0),  # extra text: not the format, still read
        ('{"bbox_2d": [20, 10, 60, 50], "label": "red', 0.0, 0.0),  # truncated JSON
        ('{"bbox_2d": [20, 10, 60]}', 0.0, 0.0),  # three numbers
        ('{"bbox_2d": ["20", 10, 60, 50]}', 0.0, 0.0),  # a string coordinate
        ("3", 0.0, 0.0),  # a number is not a box
        (box((200, 150, 300, 250)), 1.0, 0.0),  # entirely outside the image: no area inside
        (box((-40, -30, 60, 50)), 1.0, 1600 / 3000),  # clipped to (0, 0, 60, 50) first
        (box((60, 50, 20, 10)), 1.0, 1.0),  # corners swapped: ordered as evaluation does
    ],
)
def test_format_and_iou_on_crafted_boxes(text, fmt, iou):
    assert R.REWARDS["format"](text, GROUND) == fmt
    assert R.REWARDS["iou"](text, GROUND) == pytest.approx(iou)
    assert R.REWARDS["iou_hit"](text, GROUND) == float(iou >= 0.5)
    assert R.REWARDS["count"](text, GROUND) is None  # not a counting question


@pytest.mark.parametrize(
    "text, fmt, count, time",
    [
        ("3", 1.0, 1.0, -1.0),
        (" 3\n", 1.0, 1.0, -1.0),
        ("There are 3.", 0.0, 1.0, -1.0),  # extra text: the first number still counts
        ("3.5", 1.0, 0.0, -1.5),
        ("three", 0.0, 0.0, -6.0),  # unreadable: the largest error inside the 8 s video
        ("", 0.0, 0.0, -6.0),
        ("-2", 1.0, 0.0, -4.0),
    ],
)
def test_number_rewards(text, fmt, count, time):
    assert R.REWARDS["format"](text, COUNT) == fmt
    assert R.REWARDS["format"](text, TIME) == fmt
    assert R.REWARDS["count"](text, COUNT) == count
    assert R.REWARDS["time"](text, TIME) == pytest.approx(time)
    assert R.REWARDS["iou"](text, COUNT) is None


def test_answer_reward_and_weighted_sum():
    assert R.REWARDS["answer"]("  yes   PLEASE ", ANSWER) == 1.0
    assert R.REWARDS["answer"]("yes", ANSWER) == 0.0
    assert R.REWARDS["format"]("yes", ANSWER) is None
    texts = [box(BOX), "nonsense", "3", "4"]
    prompts = [GROUND, GROUND, COUNT, COUNT]
    total, parts = R.score(texts, prompts, {"format": 0.5, "iou": 2.0, "count": 1.0})
    np.testing.assert_allclose(total, [0.5 + 2.0, 0.0, 0.5 + 1.0, 0.5])
    np.testing.assert_array_equal(parts["iou"], [1.0, 0.0, np.nan, np.nan])
    np.testing.assert_array_equal(parts["count"], [np.nan, np.nan, 1.0, 0.0])


def test_registry_adds_by_name_and_names_unknown_ones():
    name = "test_rewards_length"
    if name not in R.REWARDS:
        R.register_reward(name)(lambda text, prompt: float(len(text)))
    total, _ = R.score(["abc", ""], [COUNT, COUNT], {name: 2.0})
    np.testing.assert_allclose(total, [6.0, 0.0])
    with pytest.raises(ValueError, match="already registered"):
        R.register_reward(name)(lambda text, prompt: 0.0)
    with pytest.raises(ValueError, match="unknown reward 'iuo'; registered: .*iou"):
        R.score(["x"], [GROUND], {"iuo": 1.0})


# ---- RL prompt records ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(request):
    return cached_tokenizer(request)


def test_rl_prompt_truth_in_resized_pixels(tmp_path, tok):
    write_image(tmp_path / "a.png", 168, 224)  # resized to 84 x 112 by OPTS' budget
    opts = dataclasses.replace(OPTS, media_root=str(tmp_path))
    rec = {"messages": [{"role": "user", "content": "<image>Where is it?"}],
           "images": ["a.png"], "bbox_2d": [40, 20, 120, 100]}  # fmt: skip
    p = rl_prompt(json.dumps(rec), "f:1", cfg=CFG, tokenizer=tok, options=opts)
    assert p.task == "grounding" and p.image_hw == (84, 112)
    assert p.truth["bbox_2d"] == pytest.approx(BOX)  # halved, as the image
    assert not p.sample.loss_mask.any()
    assert tok.decode(p.sample.input_ids[-3:].tolist()).endswith("assistant\n")
    resized = rl_prompt(json.dumps(rec), "f:1", cfg=CFG, tokenizer=tok,
                        options=dataclasses.replace(opts, ground_coords="resized"))  # fmt: skip
    assert resized.truth["bbox_2d"] == (40, 20, 120, 100)
    text = {"messages": [{"role": "user", "content": "How many?"}], "count": 2, "task": "mine"}
    p = rl_prompt(text, "f:2", cfg=CFG, tokenizer=tok, options=opts)
    assert (p.task, p.truth, p.image_hw) == ("mine", {"count": 2}, None)


@pytest.mark.parametrize(
    "record, reason, detail",
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "malformed", "no ground truth"),
        ({"messages": [{"role": "user", "content": "Hi"}], "count": 2.5}, "malformed", "count"),
        ({"messages": [{"role": "user", "content": "Hi"}], "count": True}, "malformed", "count"),
        ({"messages": [{"role": "user", "content": "Hi"}], "bbox_2d": [1, 2, 3]}, "malformed",
         "bbox_2d"),
        ({"messages": [{"role": "user", "content": "Hi"}], "bbox_2d": [5, 5, 1, 9]}, "malformed",
         "x1 < x2"),
        ({"messages": [{"role": "user", "content": "Hi"}], "bbox_2d": [1, 2, 3, 4]}, "malformed",
         "needs an image"),
        ({"messages": [{"role": "user", "content": "Hi"}], "second": "2"}, "malformed", "second"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "4"}],
          "count": 4}, "malformed", "end with a user turn"),
        ({"messages": [{"role": "user", "content": "<image>Hi"}], "images": ["gone.png"],
          "count": 1}, "missing_media", "gone.png"),
        ({"messages": [{"role": "robot", "content": "Hi"}], "count": 1}, "unknown_role", "robot"),
    ],
)  # fmt: skip
def test_bad_rl_records_are_one_line_errors(tmp_path, tok, record, reason, detail):
    opts = dataclasses.replace(OPTS, media_root=str(tmp_path))
    with pytest.raises(RecordError) as err:
        rl_prompt(record, "p.jsonl:3", cfg=CFG, tokenizer=tok, options=opts)
    msg = str(err.value)
    assert msg.startswith("record p.jsonl:3") and f": {reason}: " in msg and detail in msg
    assert "\n" not in msg


def test_read_rl_prompts_skips_and_counts(tmp_path, tok):
    good = {"messages": [{"role": "user", "content": "How many?"}], "count": 2}
    path = write_jsonl(tmp_path / "p.jsonl", [good, "{not json", {"messages": []}, good])
    prompts, skipped = read_rl_prompts(str(path), cfg=CFG, tokenizer=tok, on_bad="skip")
    assert len(prompts) == 2 and [e.reason for e in skipped] == ["malformed", "malformed"]
    assert str(skipped[0]).startswith(f"record {path}:2: malformed: invalid JSON")
    with pytest.raises(RecordError, match=":2: malformed"):
        read_rl_prompts(str(path), cfg=CFG, tokenizer=tok)
