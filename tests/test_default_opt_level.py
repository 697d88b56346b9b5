"""The suite compiles at XLA backend optimisation level 0 (tests/conftest.py) for speed; this
reruns a whole-model parity case and the training step's loss and gradients against
transformers in a child pytest at XLA's default level, the level users run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [
    "tests/test_parity_model.py::test_whole_model_logits[image_and_video]",
    "tests/test_train_parity.py::test_loss_and_grads_match_transformers",
]


@pytest.mark.heavy
def test_parity_and_training_step_at_the_default_level():
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "optimization_level" not in f]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), QWEN25VL_TESTS_XLA_DEFAULT_LEVEL="1",
               JAX_PLATFORMS="cpu")  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *CASES]  # header: XLA_FLAGS
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    header = [line for line in proc.stdout.splitlines() if line.startswith("XLA_FLAGS:")]
    assert len(header) == 1 and "optimization_level" not in header[0], header
    assert f"{len(CASES)} passed" in proc.stdout, proc.stdout[-2000:]
