"""Frozen parameters stay bit-identical, frozen modules carry no optimizer state, gradient
accumulation equals the full batch, and a tiny model overfits a tiny batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train.optimizer import OptimConfig
from qwen25vl_jax.train.synthetic import SyntheticBatches
from qwen25vl_jax.train.trainer import StepConfig, Trainer

CFG = ModelConfig.tiny()
BUCKET = Bucket(96, 16 * 48)


def trainer(optim: OptimConfig, **step) -> Trainer:
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    return Trainer(CFG, optim, RunOptions(dtype=jnp.float32), mesh, step=StepConfig(**step))


def test_sft_freezes_vit_bit_identically():
    t = trainer(OptimConfig(lr=1e-2, warmup_steps=1, train_vit=False))
    state = t.init_state(seed=1)
    assert all(
        not k.startswith("visual/blocks") and k != "visual/patch_embed" for k in state.trainable
    )
    moments = [k for kp, _ in jax.tree_util.tree_leaves_with_path(state.opt_state) for k in kp]
    assert not any("visual/blocks" in str(k) for k in moments)  # frozen: no optimizer state
    before = {k: np.asarray(v).copy() for k, v in state.frozen.items()}
    merger_before = np.asarray(state.trainable["visual/merger/fc1_kernel"]).copy()
    data = SyntheticBatches(CFG, BUCKET, batch_size=2)
    for _ in range(3):
        state, _ = t.step(state, next(data))
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(state.frozen[k]), v, err_msg=k)
    assert not np.array_equal(
        np.asarray(state.trainable["visual/merger/fc1_kernel"]), merger_before
    )


def test_gradient_accumulation_equals_full_batch():
    optim = OptimConfig(lr=1e-3, warmup_steps=1)
    batch = next(SyntheticBatches(CFG, BUCKET, batch_size=4, seed=3))
    results = []
    for accum in (1, 2):
        t = trainer(optim, accum_steps=accum)
        state, metrics = t.step(t.init_state(seed=2), batch)
        results.append((float(metrics["loss"]), np.asarray(state.trainable["decoder/embed"])))
    assert abs(results[0][0] - results[1][0]) <= 1e-5 * results[0][0]
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.heavy
def test_tiny_model_overfits_tiny_batch():
    t = trainer(OptimConfig(lr=3e-3, warmup_steps=5, total_steps=400, grad_clip=1.0))
    data = SyntheticBatches(CFG, Bucket(64, 16 * 48), batch_size=2, repeat=1)
    state = t.init_state(seed=0)
    loss = None
    for _ in range(300):
        state, metrics = t.step(state, next(data))
        loss = float(metrics["loss"])
        if loss < 0.05:
            break
    assert loss < 0.05, loss
