"""The demo's training-curves PNG (experiments/curves.py) from a small fake metrics.jsonl."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from experiments import published
from experiments.curves import BASELINE_COLOUR, MODEL_COLOUR, draw_curves, read_losses
from experiments.demo import compare_published, format_published

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (600, 360)


def fake_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step in range(10, 210, 10):  # a falling loss; a line without a loss is ignored
            f.write(json.dumps({"step": step, "loss": 5.0 / (1 + step / 40), "lr": 1e-3}) + "\n")
        f.write(json.dumps({"step": 200, "skipped_records": 0}) + "\n")
    points = [
        {"step": s, "n": 40, "metrics": {
            "mean_iou": {"model": iou, "baseline": 0.15, "n": 24},
            "time_mae": {"model": mae, "baseline": 0.93, "n": 10},
        }}
        for s, iou, mae in ((100, 0.2, 0.9), (200, 0.55, 0.05))
    ]  # fmt: skip
    return str(path), points


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == SIZE
        return np.asarray(im.convert("RGB"))


def has_colour(img: np.ndarray, colour) -> int:
    return int((img == np.asarray(colour, np.uint8)).all(-1).sum())


def test_published_figures_are_the_readmes():
    """experiments/published.py holds the numbers README's results table shows: each metric's
    mean over the seeds and its range."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert len(published.DEMO["seeds"]) >= 5
    for name in published.DEMO["seeds"][0]:
        s = published.spread(name)
        assert f"**{s['mean']:.3f}**" in readme, name
        assert f"{s['min']:.3f}-{s['max']:.3f}" in readme, name


def test_a_run_is_placed_against_the_published_range():
    """The demo's last lines say, per metric, whether a run falls inside the seeds' range."""
    seeds = published.DEMO["seeds"].values()
    lo_iou, hi_iou = min(m["mean_iou"] for m in seeds), max(m["mean_iou"] for m in seeds)
    best_mae = min(m["time_mae"] for m in seeds)
    run = {
        "mean_iou": {"model": (lo_iou + hi_iou) / 2},  # inside
        "acc_iou50": {"model": 1.5},  # above every seed: better
        "count_acc": {"model": -1.0},  # below every seed: worse
        "time_mae": {"model": best_mae - 1.0},  # lower is better: better
    }
    compared = compare_published(run)
    assert {n: v["place"] for n, v in compared.items()} == {
        "mean_iou": "inside", "acc_iou50": "better", "count_acc": "worse", "time_mae": "better"
    }  # fmt: skip
    text = format_published(compared, seed=7)
    assert "OUTSIDE the published range on: accuracy at IoU >= 0.5, exact-count accuracy" in text
    inside = {n: {"model": published.spread(n)["mean"]} for n in run}
    assert "inside the published range on every metric" in format_published(
        compare_published(inside), seed=0
    )


def test_read_losses_by_step(tmp_path):
    path, _ = fake_run(tmp_path)
    losses = read_losses(path)
    assert [s for s, _ in losses] == list(range(10, 210, 10))
    assert losses[0][1] == 5.0 / (1 + 10 / 40)


def test_curves_png(tmp_path):
    path, points = fake_run(tmp_path)
    out, empty = str(tmp_path / "curves.png"), str(tmp_path / "empty.png")
    draw_curves(read_losses(path), points, out, size=SIZE)
    draw_curves([], [], empty, size=SIZE)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img, blank = pixels(out), pixels(empty)
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically, nothing left behind
    # the curves are drawn: model (blue) and baseline (red) strokes that an empty plot lacks
    assert has_colour(img, MODEL_COLOUR) > 200 and has_colour(blank, MODEL_COLOUR) == 0
    assert has_colour(img, BASELINE_COLOUR) > 50 and has_colour(blank, BASELINE_COLOUR) == 0
    # three panels (loss, mean IoU, timing MAE): the loss panel's curve sits in the first
    # third of the width, the metric panels' curves beside it
    third = SIZE[0] // 3
    assert has_colour(img[:, :third], MODEL_COLOUR) > 50
    assert has_colour(img[:, third : 2 * third], BASELINE_COLOUR) > 10
    assert has_colour(img[:, 2 * third :], BASELINE_COLOUR) > 10
    # a falling loss: its curve is high at the left of its panel and low at the right
    rows, cols = np.nonzero((img[:, :third] == MODEL_COLOUR).all(-1))
    assert rows[cols < cols.min() + 10].mean() < rows[cols > cols.max() - 10].mean()


def test_an_off_scale_error_keeps_the_rest_of_its_curve_readable(tmp_path):
    """An untrained model's first timing answers (MAE 5000 s at step 1) are drawn at the top of
    the panel (`OFF_SCALE` x the baseline), not stretched over it: the later fall from 0.9 to
    0.05 s still spans tens of pixels."""
    path, points = fake_run(tmp_path)
    first = {"step": 1, "n": 40, "metrics": {
        "mean_iou": {"model": 0.0, "baseline": 0.15, "n": 24},
        "time_mae": {"model": 5000.0, "baseline": 0.93, "n": 10},
    }}  # fmt: skip
    out = str(tmp_path / "curves.png")
    draw_curves(read_losses(path), [first, *points], out, size=SIZE)
    panel = pixels(out)[:, 2 * SIZE[0] // 3 :]  # the timing panel
    rows, cols = np.nonzero((panel == MODEL_COLOUR).all(-1))
    late = cols > 125  # right of step 100 (x range 1-200 over the plot's columns 52-190)
    assert late.sum() > 10 and np.ptp(rows[late]) > 30, np.ptp(rows[late]) if late.any() else 0
