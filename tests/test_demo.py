"""The main job, shortened: data -> tokenizer -> training with experiments/train.py (2 host
devices, Orbax, TensorBoard) -> held-out generation and metrics -> report, PNG."""

from __future__ import annotations

import json
import os

import pytest

from experiments import demo
from experiments.eval import METRICS


@pytest.mark.heavy
def test_demo_end_to_end(tmp_path):
    workdir = str(tmp_path / "demo")
    report = demo.run(
        workdir, num_train=24, num_eval=9, steps=3, devices=2, eval_batch=4,
        overrides=("--config.train.log_every=1", "--config.train.save_every=2",
                   "--config.data.curriculum_steps=2"),  # 2 steps of timing, then the mix
    )  # fmt: skip

    # every metric of every task, each beside its baseline
    assert set(report["metrics"]) == set(METRICS)
    for name, m in report["metrics"].items():
        assert {"model", "baseline", "n", "unreadable"} <= set(m), name
        assert m["n"] >= 1
        assert m["model"] >= 0.0 and m["baseline"] >= 0.0
    assert set(report["beats_baseline"]) == set(METRICS)
    assert report["baselines"]["mode_count"] in (1, 2, 3, 4, 5)

    # the curriculum's records: the training records of the timing task, all of them
    with open(report["files"]["train"]) as f:
        timing = [line for line in f if json.loads(line)["task"] == "timing"]
    with open(report["files"]["curriculum"]) as f:
        assert f.readlines() == timing and timing

    # files: checkpoint of the last step, metrics, TensorBoard events, drawn boxes, JSON report
    train = os.path.join(workdir, "train")
    assert report["steps"] == 3 and os.path.isdir(os.path.join(train, "3", "params"))
    with open(os.path.join(train, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3]
    events = os.listdir(os.path.join(train, "tensorboard"))
    assert any(e.startswith("events.out.tfevents") for e in events)
    with open(report["files"]["boxes_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the curves: every saved checkpoint evaluated (the earlier on a subset), drawn beside boxes
    steps = [p["step"] for p in report["curve"]]
    assert steps == sorted(steps) and steps[-2:] == [2, 3]  # (Orbax also keeps step 1)
    assert (
        report["curve"][-1]["metrics"]["mean_iou"]["model"]
        == report["metrics"]["mean_iou"]["model"]
    )
    assert report["curve"][0]["metrics"]["mean_iou"]["n"] <= demo.CURVE_RECORDS
    with open(report["files"]["curves_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(report["published"]) == set(METRICS)
    with open(os.path.join(workdir, "report.json")) as f:
        assert json.load(f)["metrics"] == report["metrics"]
    for record in report["samples"]:
        assert isinstance(record["answer"], str)
