"""The demo's published result: the figures README.md's results table reports, as data, so that
`experiments/demo.py` can say where a run sits relative to them (tests/test_curves.py checks
that the README's table still shows these numbers)."""

from __future__ import annotations

# python -m experiments.demo on the 2-core machine, seed 0 (README "What it reached")
DEMO = {
    "date": "2026-11-28",
    "seed": 0,
    "steps": 900,
    "metrics": {"mean_iou": 0.566, "acc_iou50": 0.708, "count_acc": 0.533, "time_mae": 0.030},
}
