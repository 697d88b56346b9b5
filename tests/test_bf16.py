"""bfloat16 forward (bf16 parameters and compute; rope, softmax, norm statistics in float32)
against the float32 forward. Measured on the tiny model (BUILD_NOTES.md): max |dlogits|
0.013-0.016, mean 0.0021-0.0024, logits std 0.39."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen25vl_jax.data.hf_format import inputs_from_hf
from qwen25vl_jax.hf_weights import load_hf
from qwen25vl_jax.model.qwen25vl import RunOptions, forward
from tests.cases import CASES, make_case

MAX_TOL, MEAN_TOL = 0.03, 0.005


@pytest.mark.parametrize("case", ["image_and_video", "batch2_left_pad", "text_only"])
def test_bf16_close_to_f32(tiny, case):
    arrays = make_case(tiny.cfg, CASES[case])
    inputs, _ = inputs_from_hf(tiny.cfg, arrays)
    run = jax.jit(forward, static_argnums=3)
    f32 = np.asarray(run(*nnx.split(tiny.jax), inputs, RunOptions()))
    bf16_model, _ = load_hf(tiny.path, param_dtype=jnp.bfloat16)
    graphdef, state = nnx.split(bf16_model)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(state))
    bf16 = np.asarray(run(graphdef, state, inputs, RunOptions(dtype=jnp.bfloat16)))
    real = arrays["attention_mask"].astype(bool)
    assert np.isfinite(bf16).all()
    diff = np.abs(bf16 - f32)[real]
    assert diff.max() <= MAX_TOL and diff.mean() <= MEAN_TOL, (diff.max(), diff.mean())
    assert diff.max() > 0  # really ran in bf16
