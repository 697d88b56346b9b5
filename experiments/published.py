"""The demo's published result: the figures README.md's results table reports, as data, so that
`experiments/demo.py` can say whether a run falls inside the range they span
(tests/test_curves.py checks that the README's table still shows these numbers).

The README reports a distribution, not one run: `python -m experiments.demo --seed=S` for seeds
0-4, each from a fresh data generation and weight initialisation, on the machine below."""

from __future__ import annotations

import statistics

# python -m experiments.demo_sweep --variants=layers5 --seeds=S --num_eval=400 for S in 0-4
# from a clone of 834482c (README "What it reached"; BUILD_NOTES §6 "A fifth decoder layer"):
# the demo config of 91a42c1 (5 decoder layers, 1100 unrolled steps), the same batches and
# training
DEMO = {
    "date": "2026-12-02",
    "machine": "2 CPU cores (AMD EPYC), one run at a time, load average 1.3-1.5",
    "steps": 1100,
    "seeds": {
        0: {"mean_iou": 0.624, "acc_iou50": 0.812, "count_acc": 0.750, "time_mae": 0.000},
        1: {"mean_iou": 0.580, "acc_iou50": 0.746, "count_acc": 0.467, "time_mae": 0.030},
        2: {"mean_iou": 0.599, "acc_iou50": 0.771, "count_acc": 0.550, "time_mae": 0.000},
        3: {"mean_iou": 0.538, "acc_iou50": 0.633, "count_acc": 0.583, "time_mae": 0.000},
        4: {"mean_iou": 0.516, "acc_iou50": 0.596, "count_acc": 0.400, "time_mae": 0.000},
    },
}


def spread(metric: str) -> dict[str, float]:
    """{"mean", "min", "max"} of `metric` over the published seeds."""
    values = [m[metric] for m in DEMO["seeds"].values()]
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def place(metric: str, value: float) -> str:
    """Where `value` falls against the published seeds' range: "inside", "better" (than every
    seed, in the metric's direction) or "worse". Compared at the README's 3 decimals."""
    from experiments.metrics import is_better

    s, v = spread(metric), round(value, 3)
    if round(s["min"], 3) <= v <= round(s["max"], 3):
        return "inside"
    return "better" if is_better(metric, v, s["mean"]) else "worse"
