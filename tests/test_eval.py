"""experiments/metrics.py on hand-made cases (IoU, unreadable answers counted as wrong, time MAE,
baselines with the median time, beating every baseline) and experiments/eval.py: task detection,
truth boxes in either coordinate convention, scoring, and one evaluation of a tiny random model
on generated synthetic records with baselines fitted on the training file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from experiments import eval as ev
from experiments import metrics as M
from qwen25vl_jax.data.records import RecordOptions


# ---- metrics ----------------------------------------------------------------------------------
def test_box_iou():
    assert M.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert M.box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert M.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert M.box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)  # both axes
    assert M.box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(4 / 16)  # contained
    assert M.box_iou([5, 5, 5, 9], [0, 0, 10, 10]) == 0.0  # no area
    assert M.box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_grounding_metrics_unreadable_is_wrong_and_half_counts():
    truth = [[0, 0, 10, 10]] * 4
    m = M.grounding_metrics([[0, 0, 10, 10], [5, 0, 15, 10], None, [0, 0, 10, 5]], truth)
    assert m["mean_iou"] == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4)
    assert m["acc_iou50"] == pytest.approx(2 / 4)  # IoU 1 and exactly 0.5; 1/3 and None miss


def test_counting_and_timing_metrics():
    assert M.counting_metrics([3, None, 2.0, 1], [3, 1, 2, 4]) == {"count_acc": 0.5}
    # unreadable: max(t, duration - t): max(2, 6) = 6 and max(7, 1) = 7
    m = M.timing_metrics([3, None, 5.5, None], [1, 2, 5, 7], [8, 8, 8, 8])
    assert m["time_mae"] == pytest.approx((2 + 6 + 0.5 + 7) / 4)


@pytest.mark.parametrize(
    ("text", "want"),
    [("3", 3.0), ("There are 12 triangles.", 12.0), ("at 2.5 s", 2.5), ("-1.5", -1.5),
     ("none", None), ("", None)],
)  # fmt: skip
def test_parse_number(text, want):
    assert M.parse_number(text) == want


def test_fit_baselines():
    stats = M.fit_baselines([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [1, 3, 3, 2], [1, 2, 9])
    assert stats == {"mean_box_rel": [0.25, 0.25, 0.75, 0.75], "mode_count": 3,
                     "mean_time": 4.0, "median_time": 2.0}  # fmt: skip
    assert M.fit_baselines([], [2, 2, 1, 1], [])["mode_count"] == 1  # tie: the smallest
    assert M.fit_baselines([], [], []) == dict.fromkeys(
        ("mean_box_rel", "mode_count", "mean_time", "median_time"))  # fmt: skip


def _entry(model, **baselines):
    return {"model": model, "baselines": baselines, "n": 4, "unreadable": 0}


def test_beats_baselines_needs_every_baseline():
    metrics = {
        "mean_iou": _entry(0.6, **{"mean box": 0.1}),
        "count_acc": _entry(0.3, **{"most frequent count": 0.3}),  # a tie is not a win
        "time_mae": _entry(1.5, **{"mean time": 2.0, "median time": 1.2}),  # beats the mean only
        "acc_iou50": _entry(0.5),  # no baseline: nothing shown
    }
    assert M.beats_baselines(metrics) == {
        "mean_iou": True, "count_acc": False, "time_mae": False, "acc_iou50": False}  # fmt: skip
    metrics["time_mae"]["model"] = 1.0
    assert M.beats_baselines(metrics)["time_mae"]
    assert M.strongest("time_mae", [2.0, 1.2]) == 1.2 and M.strongest("mean_iou", [0.1, 0.3]) == 0.3
    table = ev.format_table(metrics)
    for name in ("mean box", "most frequent count", "mean time", "median time", "(none)"):
        assert name in table
    assert [line.split()[-1] for line in table.splitlines()[1:3]] == ["yes", "no"]


# ---- records -> examples -> scores ------------------------------------------------------------
def _write(tmp_path, records, name="set.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _qa(question, answer, **media):
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], **media}  # fmt: skip


def test_examples_tasks_truths_and_baselines(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    records = [
        _qa("<image>Where is the red circle?", '{"bbox_2d": [10, 20, 50, 60], "label": "c"}',
            images=["a.png"]),
        _qa("<image>Where?", '```json\n[{"bbox_2d": [30, 40, 70, 80]}]\n```', images=["a.png"]),
        _qa("<image>How many squares?", "3", images=["a.png"]),
        _qa("<image>How many circles?", "3", images=["a.png"]),
        _qa("<image>How many triangles?", "1", images=["a.png"]),
        _qa("<video>When?", "4", videos=["v.mp4"]),
        _qa("<video>When?", "9", videos=["v.mp4"]),
        {**_qa("<video>When?", "2", videos=["v.mp4"]), "task": "timing"},
    ]  # fmt: skip
    options = RecordOptions(media_root=str(tmp_path))
    examples = ev.load_examples(_write(tmp_path, records), options)
    assert [e.task for e in examples] == ["grounding"] * 2 + ["counting"] * 3 + ["timing"] * 3
    assert examples[0].truth == (10, 20, 50, 60) and examples[0].original_hw == (100, 200)
    assert examples[0].prompt[-1]["role"] == "user"
    stats = ev.baseline_stats(examples)
    # relative boxes (x / 200, y / 100) averaged
    np.testing.assert_allclose(stats["mean_box_rel"], [0.1, 0.3, 0.3, 0.7])
    assert stats["mode_count"] == 3 and stats["mean_time"] == 5.0 and stats["median_time"] == 4.0
    assert ev.load_examples(_write(tmp_path, records), options, max_samples=2)[1].truth == (
        30, 40, 70, 80)  # fmt: skip


def test_multi_turn_record_is_one_question_per_reply(tmp_path):
    Image.new("RGB", (64, 32)).save(tmp_path / "a.png")
    rec = {"messages": [
        {"role": "user", "content": "<image>Where is A?"},
        {"role": "assistant", "content": '{"bbox_2d": [0, 0, 8, 8]}'},
        {"role": "user", "content": "How many?"},
        {"role": "assistant", "content": "2"},
    ], "images": ["a.png"]}  # fmt: skip
    first, second = ev.load_examples(_write(tmp_path, [rec]), RecordOptions(str(tmp_path)))
    assert (first.task, second.task) == ("grounding", "counting")
    assert len(first.prompt) == 1 and len(second.prompt) == 3  # earlier turns are the prompt
    assert len(second.conversation.media) == 1


def test_resized_truth_boxes_are_mapped_to_the_original(tmp_path):
    Image.new("RGB", (300, 150)).save(tmp_path / "a.png")  # resized to h 140, w 308
    rec = _qa("<image>Where?", '{"bbox_2d": [28, 14, 56, 28]}', images=["a.png"])
    options = RecordOptions(media_root=str(tmp_path), ground_coords="resized")
    (e,) = ev.load_examples(_write(tmp_path, [rec]), options)
    rw, rh = 308, 140
    np.testing.assert_allclose(e.truth, [28 * 300 / rw, 14 * 150 / rh, 56 * 300 / rw,
                                         28 * 150 / rh])  # fmt: skip


def test_score_counts_unreadable_and_scores_every_baseline(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    records = [
        _qa("<image>Where?", '{"bbox_2d": [0, 0, 50, 50]}', images=["a.png"]),
        _qa("<image>Where?", '{"bbox_2d": [50, 50, 100, 100]}', images=["a.png"]),
        _qa("<image>How many?", "2", images=["a.png"]),
        _qa("<video>When?", "3", videos=["v.mp4"]),
        _qa("<video>When?", "1", videos=["v.mp4"]),
    ]  # fmt: skip
    examples = ev.load_examples(_write(tmp_path, records), RecordOptions(str(tmp_path)))
    answers = [  # the model saw a 200 x 200 resized image: boxes are mapped back to 100 x 100
        {"answer": '{"bbox_2d": [0, 0, 100, 100], "label": "x"}', "resized_hw": (200, 200)},
        {"answer": "no idea", "resized_hw": (200, 200)},
        {"answer": "2", "resized_hw": (200, 200)},
        {"answer": "seconds", "resized_hw": None, "duration": 8.0},
        {"answer": "1 s", "resized_hw": None, "duration": 8.0},
    ]
    stats = {"mean_box_rel": [0.0, 0.0, 0.5, 0.5], "mode_count": 1, "mean_time": 4.0,
             "median_time": 2.0}  # fmt: skip
    result = ev.score(examples, answers, stats)
    m = result["metrics"]
    assert list(m) == ["mean_iou", "acc_iou50", "count_acc", "time_mae"]
    assert m["mean_iou"]["model"] == pytest.approx(0.5) and m["mean_iou"]["unreadable"] == 1
    assert m["acc_iou50"]["model"] == pytest.approx(0.5)
    assert m["mean_iou"]["baselines"] == {"mean box": pytest.approx(0.5)}  # hits the first
    assert m["count_acc"] == {"model": 1.0, "baselines": {"most frequent count": 0.0},
                              "baseline": 0.0, "n": 1, "unreadable": 0}  # fmt: skip
    # unreadable: max(3, 8 - 3) = 5; exact: 0
    assert m["time_mae"]["model"] == pytest.approx(2.5) and m["time_mae"]["unreadable"] == 1
    assert m["time_mae"]["baselines"] == {"mean time": 2.0, "median time": 1.0}
    assert m["time_mae"]["baseline"] == 1.0  # the strongest
    assert result["beats_baseline"] == {"mean_iou": False, "acc_iou50": False, "count_acc": True,
                                        "time_mae": False}  # fmt: skip
    assert result["samples"][0]["pred"] == [0.0, 0.0, 50.0, 50.0]
    assert result["samples"][1]["pred"] is None


# ---- one evaluation end to end ----------------------------------------------------------------
def test_evaluate_tiny_random_model_on_synthetic_records(tmp_path):
    from flax import nnx

    from experiments import synthetic_tasks
    from experiments.configs import base, demo
    from qwen25vl_jax.config import ModelConfig
    from qwen25vl_jax.data.records import decode_record, parse_record
    from qwen25vl_jax.data.small_vocab import build_small_tokenizer, chat_texts
    from qwen25vl_jax.model.qwen25vl import Qwen25VL

    # 12 held-out records: 7 grounding, 2 counting, 3 timing (synthetic_tasks.MIX)
    paths = synthetic_tasks.generate(str(tmp_path / "data"), num_train=8, num_eval=12, seed=3)
    with open(paths["train"]) as f:
        raw = [json.loads(line) for line in f]
    tok = build_small_tokenizer(
        chat_texts(parse_record(decode_record(r, "t"), "t").messages for r in raw)
    )
    c = demo.get_config()
    c.model.overrides.text.vocab_size = tok.get_vocab_size()
    cfg = ModelConfig.preset(c.model.preset, c.model.overrides.to_dict())  # as experiments.train
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    d = c.data
    d.media_root = paths["media_root"]
    options = base.record_options(d)  # as training decodes the records
    out, png = tmp_path / "report.json", tmp_path / "boxes.png"
    result = ev.evaluate(model, tok, paths["eval"], options, train_data=paths["train"],
                         batch_size=2, max_new_tokens=4, output=str(out), draw=str(png),
                         log=lambda _: None)  # fmt: skip

    assert set(result["metrics"]) == set(M.METRICS)  # all three tasks
    assert result["baselines_from"] == paths["train"]
    for name, v in result["metrics"].items():
        assert set(v) == {"model", "baselines", "baseline", "n", "unreadable"}, name
        assert set(v["baselines"]) == set(M.BASELINES[M.METRICS[name][0]])
    with open(paths["eval"]) as f:
        asked = [json.loads(line)["task"] for line in f]
    assert [s["task"] for s in result["samples"]] == asked  # one question per record, in order
    assert all(isinstance(s["answer"], str) for s in result["samples"])
    assert json.loads(out.read_text())["metrics"] == result["metrics"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the baselines are the training file's, computed here from its raw JSON
    answers = {t: [] for t in M.BASELINES}
    for r in raw:
        replies = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        if r["task"] == "grounding":
            with Image.open(tmp_path / "data" / r["images"][0]) as im:
                wh = np.tile(im.size, 2)
            answers["grounding"] += [np.asarray(json.loads(a)["bbox_2d"]) / wh for a in replies]
        else:
            answers[r["task"]] += [float(a) for a in replies]
    got = result["baselines"]
    np.testing.assert_allclose(got["mean_box_rel"], np.mean(answers["grounding"], 0))
    counts = answers["counting"]
    assert counts.count(got["mode_count"]) == max(counts.count(c) for c in counts)
    assert got["mean_time"] == pytest.approx(np.mean(answers["timing"]))
    assert got["median_time"] == pytest.approx(np.median(answers["timing"]))
    # and each baseline's score is its constant's, on the evaluated truths
    truths = [s["truth"] for s in result["samples"] if s["task"] == "timing"]
    for name, key in (("mean time", "mean_time"), ("median time", "median_time")):
        want = np.mean([abs(got[key] - t) for t in truths])
        assert result["metrics"]["time_mae"]["baselines"][name] == pytest.approx(want)
