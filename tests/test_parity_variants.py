"""Whole-model parity across config variants: tied embeddings, GQA ratios, window sizes 56 and
112, text head dims 16 and 128."""

from __future__ import annotations

import pytest

from qwen25vl_jax.config import ModelConfig
from tests.cases import CASES, make_case
from tests.conftest import Reference
from tests.hf_reference import hf_logits
from tests.test_parity_model import assert_logits_match, run_ours

VARIANTS = {
    "tied": ModelConfig.tiny(tie_word_embeddings=True),
    "mha_kv6": ModelConfig.tiny(num_kv_heads=6),
    "mqa_kv1": ModelConfig.tiny(num_kv_heads=1),
    "window112": ModelConfig.tiny(vision={"window_size": 112, "fullatt_block_indexes": (0, 2)}),
    "head_dim16": ModelConfig.tiny(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                                   mrope_section=(2, 3, 3)),
    "head_dim128": ModelConfig.tiny(hidden_size=256, num_heads=2, num_kv_heads=1, head_dim=128,
                                    intermediate_size=96, mrope_section=(16, 24, 24)),
}  # fmt: skip


# grids large enough for ragged 4x4-unit windows at window 112 (patch 14: 8x8 patches a window)
WINDOW112_CASES = {
    "image_and_video": [[3, ("image", (1, 18, 22)), 2, ("video", (2, 10, 6), 0.75), 4]],
    "batch2_left_pad": [[3, ("image", (1, 14, 10)), 9], [2, ("image", (1, 18, 6)), 3]],
}


@pytest.mark.heavy
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_logits(variant, tmp_path):
    ref_model = Reference(VARIANTS[variant], tmp_path)
    cases = WINDOW112_CASES if variant == "window112" else CASES
    for case in ("image_and_video", "batch2_left_pad"):
        arrays = make_case(ref_model.cfg, cases[case], seed=7)
        if case == "batch2_left_pad":  # one row really is left-padded
            assert arrays["attention_mask"][:, 0].min() == 0, case
        ref, _, _ = hf_logits(ref_model.torch, ref_model.cfg, arrays)
        ours, _, _ = run_ours(ref_model.jax, ref_model.cfg, arrays)
        assert_logits_match(ours, ref, arrays["attention_mask"])
