"""`python -m experiments.score --hf_dir=...` gives transformers' logits on new inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests.cases import make_case
from tests.hf_reference import hf_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_score(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.score", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_score_cli_matches_transformers(tiny, tmp_path):
    rows = [[4, ("image", (1, 12, 8)), 3, ("video", (3, 6, 4), 1.25), 5], [6, ("image", (1, 4, 8))]]
    arrays = make_case(tiny.cfg, rows, seed=11)
    np.savez(tmp_path / "in.npz", **arrays)
    proc = run_score(f"--hf_dir={tiny.path}", f"--inputs={tmp_path / 'in.npz'}",
                     f"--output={tmp_path / 'out.npz'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "out.npz")
    ref, ref_pos, ref_deltas = hf_logits(tiny.torch, tiny.cfg, arrays)
    real = arrays["attention_mask"].astype(bool)
    assert np.abs(out["logits"] - ref)[real].max() <= 1e-4
    np.testing.assert_array_equal(out["position_ids"], ref_pos)
    np.testing.assert_array_equal(out["rope_deltas"], ref_deltas)


def test_score_cli_errors(tiny, tmp_path):
    proc = run_score(f"--hf_dir={tiny.path}", f"--inputs={tmp_path / 'none.npz'}",
                     f"--output={tmp_path / 'o.npz'}")  # fmt: skip
    assert proc.returncode != 0 and "none.npz: no such inputs file" in proc.stderr
    np.savez(tmp_path / "bad.npz", input_ids=np.zeros((1, 3), np.int64), pixels=np.zeros(3))
    proc = run_score(f"--hf_dir={tiny.path}", f"--inputs={tmp_path / 'bad.npz'}",
                     f"--output={tmp_path / 'o.npz'}")  # fmt: skip
    assert proc.returncode != 0 and "unknown arrays ['pixels']" in proc.stderr
    assert not (tmp_path / "o.npz").exists()
