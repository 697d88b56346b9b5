"""Whole-model float32 parity against transformers' Qwen2_5_VLForConditionalGeneration."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from qwen25vl_jax.data.hf_format import inputs_from_hf
from qwen25vl_jax.model.qwen25vl import forward
from tests.cases import CASES, make_case
from tests.hf_reference import hf_logits

TOL = 1e-4


def run_ours(model, cfg, arrays):
    inputs, deltas = inputs_from_hf(cfg, arrays)
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(forward)(graphdef, state, inputs)), inputs, deltas


def assert_logits_match(ours, ref, mask):
    real = mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    assert diff <= TOL, f"max |dlogits| {diff:.2e} > {TOL}"
    np.testing.assert_array_equal(ours.argmax(-1)[real], ref.argmax(-1)[real])


@pytest.mark.parametrize("case", sorted(CASES))
def test_whole_model_logits(tiny, case):
    arrays = make_case(tiny.cfg, CASES[case], seed=len(case))
    ref, ref_pos, ref_deltas = hf_logits(tiny.torch, tiny.cfg, arrays)
    ours, inputs, deltas = run_ours(tiny.jax, tiny.cfg, arrays)
    mask = arrays["attention_mask"]
    np.testing.assert_array_equal(inputs.positions * mask, ref_pos * mask)
    np.testing.assert_array_equal(deltas, ref_deltas)
    assert_logits_match(ours, ref, mask)
