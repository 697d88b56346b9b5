"""Grounding, counting and video-timing metrics, and the trivial baselines they are judged
against. Pure functions of predictions and truths (`experiments/eval.py` produces both).

What a wrong or unreadable answer (None) counts as:
* grounding: IoU 0 (so also a miss at IoU >= 0.5);
* counting: wrong;
* timing: the largest error any guess inside the video could make, max(t, duration - t).

Baselines are constants fitted on the training set (`fit_baselines`): the mean box (relative
to the image size), the most frequent count, and the mean and the median time. The median is
there because it minimises the absolute error: it beats the mean time without learning
anything, so a model must beat both.
"""

from __future__ import annotations

import collections

import numpy as np

# the answer readers are the library's (the RL rewards read answers the same way)
from qwen25vl_jax.inference.grounding import box_iou
from qwen25vl_jax.train.rewards import parse_number  # noqa: F401 (eval reads it here)

# metric -> (task, "higher" / "lower" is better, description)
METRICS = {
    "mean_iou": ("grounding", "higher", "mean IoU"),
    "acc_iou50": ("grounding", "higher", "accuracy at IoU >= 0.5"),
    "count_acc": ("counting", "higher", "exact-count accuracy"),
    "time_mae": ("timing", "lower", "mean abs. error (s)"),
}
# task -> {baseline name: its constant's key in `fit_baselines`' dict}
BASELINES = {
    "grounding": {"mean box": "mean_box_rel"},
    "counting": {"most frequent count": "mode_count"},
    "timing": {"mean time": "mean_time", "median time": "median_time"},
}


def grounding_metrics(pred_boxes, true_boxes) -> dict[str, float]:
    """pred_boxes: a box or None (unreadable) per sample -> mean IoU, acc@IoU>=0.5."""
    ious = np.asarray(
        [0.0 if p is None else box_iou(p, t) for p, t in zip(pred_boxes, true_boxes, strict=True)]
    )
    return {"mean_iou": float(ious.mean()), "acc_iou50": float((ious >= 0.5).mean())}


def counting_metrics(pred_counts, true_counts) -> dict[str, float]:
    """Exact-count accuracy; None (unreadable) is wrong."""
    ok = [p is not None and p == t for p, t in zip(pred_counts, true_counts, strict=True)]
    return {"count_acc": float(np.mean(ok))}


def timing_metrics(pred_times, true_times, durations) -> dict[str, float]:
    """Mean absolute error in seconds; None (unreadable) costs max(t, duration - t)."""
    err = [
        max(t, d - t) if p is None else abs(p - t)
        for p, t, d in zip(pred_times, true_times, durations, strict=True)
    ]
    return {"time_mae": float(np.mean(err))}


def task_metrics(task: str, preds, truths, durations=None) -> dict[str, float]:
    """The metrics of one task (durations: timing only)."""
    if task == "grounding":
        return grounding_metrics(preds, truths)
    if task == "counting":
        return counting_metrics(preds, truths)
    if task == "timing":
        return timing_metrics(preds, truths, durations)
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(BASELINES)}")


def fit_baselines(rel_boxes, counts, times) -> dict:
    """The baselines' constants from training truths: {"mean_box_rel": [x1, y1, x2, y2] as
    fractions of the image width / height, "mode_count": int (ties: the smallest),
    "mean_time", "median_time": seconds}; None where the training set has no such question."""
    freq = collections.Counter(int(c) for c in counts)
    return {
        "mean_box_rel": np.mean(rel_boxes, 0).tolist() if len(rel_boxes) else None,
        "mode_count": min(freq, key=lambda c: (-freq[c], c)) if freq else None,
        "mean_time": float(np.mean(times)) if len(times) else None,
        "median_time": float(np.median(times)) if len(times) else None,
    }


def is_better(metric: str, value: float, than: float) -> bool:
    """Strictly better, in the metric's direction."""
    return value > than if METRICS[metric][1] == "higher" else value < than


def strongest(metric: str, values) -> float | None:
    """The hardest of several baseline values to beat (None if there are none)."""
    values = list(values)
    if not values:
        return None
    return max(values) if METRICS[metric][1] == "higher" else min(values)


def beats_baselines(metrics: dict) -> dict[str, bool]:
    """Per metric: is the model strictly better than *every* one of its baselines? False for a
    metric without any baseline (nothing was shown). `metrics`: {name: {"model": v,
    "baselines": {baseline name: v}}} as `experiments.eval.score` reports them."""
    return {
        m: bool(v["baselines"])
        and all(is_better(m, v["model"], b) for b in v["baselines"].values())
        for m, v in metrics.items()
    }
