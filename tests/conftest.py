"""Session-wide fixtures: one random transformers model per config variant, saved and loaded."""

from __future__ import annotations

import jax
import pytest

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.hf_weights import load_hf
from tests.hf_reference import build_hf_model

jax.config.update("jax_default_matmul_precision", "highest")


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
