"""The demo's RL prompts (synthetic records -> RL prompt records -> `RLPrompt`s whose truth
scores the record's own answer 1), the prompt order of experiments/rl.py, and its bad
configs as one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments import synthetic_tasks
from experiments.configs import grpo as grpo_config
from experiments.rl import read_sections, step_prompts
from qwen25vl_jax.data.records import RecordOptions
from qwen25vl_jax.data.rl_prompts import read_rl_prompts
from qwen25vl_jax.train import rewards as R
from tests.test_records import CFG, cached_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_synthetic_records_become_prompts_their_answers_solve(tmp_path, request):
    paths = synthetic_tasks.generate(str(tmp_path), 6, 1, seed=3, mix=(0.5, 0.5, 0.0))
    out = str(tmp_path / "prompts.jsonl")
    assert synthetic_tasks.write_rl_prompts(paths["train"], out) == 6
    options = RecordOptions(media_root=str(tmp_path), max_pixels=36 * 28 * 28)
    prompts, skipped = read_rl_prompts(
        out, cfg=CFG, tokenizer=cached_tokenizer(request), options=options
    )
    assert len(prompts) == 6 and not skipped
    with open(paths["train"]) as f:
        records = [json.loads(line) for line in f]
    assert {p.task for p in prompts} == {"grounding", "counting"}
    for p, rec in zip(prompts, records, strict=True):
        answer = rec["messages"][-1]["content"]
        if p.task == "grounding":  # the SFT answer, rescaled as training rescales it
            h, w = p.image_hw
            oh, ow = p.sample.media[0].original_hw
            x1, y1, x2, y2 = json.loads(answer)["bbox_2d"]
            scaled = [x1 * w / ow, y1 * h / oh, x2 * w / ow, y2 * h / oh]
            answer = json.dumps({"bbox_2d": scaled, "label": "x"})
            assert R.REWARDS["iou"](answer, p) == pytest.approx(1.0)
        else:
            assert R.REWARDS["count"](answer, p) == 1.0
        assert R.REWARDS["format"](answer, p) == 1.0


def test_step_prompts_cover_each_epoch_once_and_replay():
    items = list(range(10))
    epoch = [x for s in range(5) for x in step_prompts(items, s, 2, seed=4)]
    assert sorted(epoch) == items  # every prompt once per epoch
    assert step_prompts(items, 3, 2, seed=4) == epoch[6:8]  # a pure function of the step
    assert step_prompts(items, 5, 2, seed=4) != step_prompts(items, 5, 2, seed=5)


def test_config_sections_are_read_strictly():
    c = grpo_config.get_config("tiny")
    rollout, loss, per_step = read_sections(c)
    assert (loss.temperature, per_step) == (rollout.temperature, 4)
    c.rl.group_sise = 4
    with pytest.raises(ValueError, match="unknown config key rl.group_sise"):
        read_sections(c)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.rl.kl_coef=0.1"], "rl.kl_coef > 0 needs the reference"),
        (["--config.data.paths=/nonexistent/p.jsonl"], "/nonexistent/p.jsonl"),
    ],
)
def test_bad_runs_end_in_one_line(tmp_path, flags, message):
    cmd = [sys.executable, "-m", "experiments.rl", "--config=experiments/configs/grpo.py:tiny",
           f"--workdir={tmp_path / 'w'}", *flags]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rl: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing written
