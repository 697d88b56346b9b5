"""Frozen parameters stay bit-identical, frozen modules carry no optimizer state, gradient
accumulation equals the full batch, and a tiny model overfits a tiny batch."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train import step as step_lib
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


def capture_gradients() -> optax.GradientTransformation:
    """An "optimizer" whose state is the last gradient it was given (and whose update is 0)."""
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
    return optax.GradientTransformation(zeros, lambda g, state, params=None: (zeros(g), g))


def test_gradient_accumulation_equals_full_batch():
    """The accumulated gradient itself (every leaf), the loss and grad_norm equal the full
    batch's. The micro-batches hold different numbers of supervised tokens, so a dropped or
    per-micro-batch-averaged gradient differs. (Compared as gradients, not as parameters
    after a step: the trainer's first step has learning rate 0, warmup starts at 0.)"""
    batch = next(SyntheticBatches(CFG, BUCKET, batch_size=4, seed=3))
    mask = np.array(batch.loss_mask)
    mask[3, : mask.shape[1] // 2] = 0  # fewer supervised tokens in the second micro-batch
    batch = dataclasses.replace(batch, loss_mask=mask)
    counts = batch.loss_mask.reshape(2, -1).sum(1)
    assert counts[0] != counts[1], counts
    grads, metrics = [], []
    for accum in (1, 2):
        t = trainer(OptimConfig(), accum_steps=accum)
        capture = capture_gradients()
        step = jax.jit(functools.partial(
            step_lib.train_step, graphdef=t.graphdef, optimizer=capture,
            opts=t.opts, accum_steps=accum,
        ))  # fmt: skip
        state = t.init_state(seed=2)
        state = dataclasses.replace(state, opt_state=capture.init(state.trainable))
        state, m = jax.device_get(step(state, t.global_batch(batch)))
        grads.append(state.opt_state)
        metrics.append(m)
    one, two = grads
    assert one.keys() == two.keys() and len(one) > 30
    for k in one:
        scale = float(np.linalg.norm(one[k]))
        assert scale > 0 and float(np.linalg.norm(two[k] - one[k])) <= 2e-5 * scale, k
    for name in ("loss", "grad_norm", "supervised_tokens"):
        a, b = float(metrics[0][name]), float(metrics[1][name])
        assert abs(a - b) <= 1e-5 * abs(a), (name, a, b)


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
