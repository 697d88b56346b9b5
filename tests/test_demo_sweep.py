"""The demo sweep's variant specs and table (the runs themselves are `demo.run`, tested in
test_demo.py)."""

import pytest

from experiments import demo_sweep


def test_variant_specs_compose_on_the_old_demo():
    kw = demo_sweep.run_kwargs("v5_mix70_layers4_steps1000", seed=3, num_eval=50, workers=2)
    assert kw["mix"] == [0.7, 0.15, 0.15] and kw["model_args"] == {"num_layers": 4}
    assert kw["steps"] == 1000 and kw["seed"] == 3 and kw["num_eval"] == 50
    assert "--config.data.seq_len=512" in kw["overrides"]  # still the old row shape
    assert "--config.data.workers=2" in kw["overrides"]
    demo = demo_sweep.run_kwargs("demo", seed=0, num_eval=50, workers=1)
    assert demo["mix"] is None and demo["model_args"] is None and demo["steps"] is None
    assert not any("seq_len" in o for o in demo["overrides"])
    assert demo_sweep.run_kwargs("v5", seed=0, num_eval=5, workers=1, steps=7)["steps"] == 7
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        demo_sweep.run_kwargs("nope", seed=0, num_eval=1, workers=1)


def test_table_shows_model_beside_baseline_and_failures():
    metric = lambda m, b: {"model": m, "baseline": b}  # noqa: E731
    report = {"metrics": {"mean_iou": metric(0.4, 0.15), "time_mae": metric(0.1, 1.0)},
              "times": {"total_s": 512.3}}  # fmt: skip
    lines = demo_sweep.table([("demo s0", report), ("v5 s1", None)]).splitlines()
    assert lines[0] == "| run | mean_iou | acc_iou50 | count_acc | time_mae | wall s |"
    assert lines[2] == "| demo s0 | 0.400 (0.150) | - | - | 0.100 (1.000) | 512 |"
    assert lines[3].startswith("| v5 s1 | failed |")
