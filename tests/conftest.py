"""Session-wide fixtures: one random transformers model per config variant, saved and loaded."""

from __future__ import annotations

import os

# XLA's backend optimisations (LLVM passes) dominate compile time of the many small programs the
# tests build and buy nothing at these sizes: level 0 cuts the suite's time ~3x on 2 cores.
# Numerics are unchanged (no fast-math either way). Benchmarks never set this, and
# tests/test_default_opt_level.py reruns parity cases with QWEN25VL_TESTS_XLA_DEFAULT_LEVEL=1.
if os.environ.get("QWEN25VL_TESTS_XLA_DEFAULT_LEVEL") != "1" and (
    "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.hf_weights import load_hf
from tests.hf_reference import build_hf_model

jax.config.update("jax_default_matmul_precision", "highest")

# Property tests draw the same examples on every run (CI must not pass or fail by chance);
# HYPOTHESIS_PROFILE=explore draws fresh ones when hunting for new failures by hand.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    return f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '')!r}"


class Reference:
    """A transformers model, its saved directory, and our model loaded from that directory."""

    def __init__(self, cfg: ModelConfig, path):
        self.cfg = cfg
        self.path = path
        self.torch = build_hf_model(cfg)
        self.torch.save_pretrained(path)
        self.jax, loaded_cfg = load_hf(path)
        assert loaded_cfg == cfg


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Reference:
    return Reference(ModelConfig.tiny(), tmp_path_factory.mktemp("tiny"))
