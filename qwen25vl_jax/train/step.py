"""The training step: a pure function of (TrainState, Batch), jit-compiled once with explicit
shardings and the state donated.

Loss = next-token cross-entropy summed over supervised tokens of the *global* batch (all
micro-batches, all devices) divided by their number: every real token weighs the same whatever
the packing, padding or accumulation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from qwen25vl_jax.model.inputs import Batch, split_batch
from qwen25vl_jax.model.qwen25vl import RunOptions
from qwen25vl_jax.param_paths import unflatten
from qwen25vl_jax.train.losses import chunked_cross_entropy


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """step: int32[]; trainable, frozen: flat {path: array} float32 master weights;
    opt_state: optax state over `trainable` only; rng: uint32[2] key data."""

    step: jax.Array
    trainable: dict[str, jax.Array]
    frozen: dict[str, jax.Array]
    opt_state: Any
    rng: jax.Array

    @property
    def params(self) -> dict:
        """The full nested parameter dict (as `nnx.to_pure_dict` of the model)."""
        return unflatten({**self.trainable, **self.frozen})


def loss_sum_and_count(
    trainable, frozen, batch: Batch, *, graphdef: nnx.GraphDef, opts: RunOptions, chunk: int
):
    """(sum of token losses, number of supervised tokens) of one (micro-)batch."""
    model = nnx.merge(graphdef, unflatten({**trainable, **frozen}))
    hidden = model.hidden(batch, opts)
    return chunked_cross_entropy(
        hidden,
        model.decoder.logits,
        batch.targets,
        batch.loss_mask,
        chunk=chunk,
        unroll=opts.unroll,
    )


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    opts: RunOptions,
    accum_steps: int = 1,
    loss_chunk: int = 1024,
    lr_fn=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step over `batch`, accumulated over `accum_steps` micro-batches."""
    kw = dict(graphdef=graphdef, opts=opts, chunk=loss_chunk)

    def micro(carry, mb):
        g_acc, l_acc, n_acc = carry
        (loss, count), g = jax.value_and_grad(
            lambda t: loss_sum_and_count(t, state.frozen, mb, **kw), has_aux=True
        )(state.trainable)
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        return (g_acc, l_acc + loss, n_acc + count), None

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    if accum_steps == 1:
        (grads, loss_sum, count), _ = micro(init, batch)
    else:
        (grads, loss_sum, count), _ = jax.lax.scan(micro, init, split_batch(batch, accum_steps))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {
        "loss": loss_sum / denom,
        "grad_norm": optax.tree.norm(grads),
        "supervised_tokens": count,
        "real_tokens": (batch.segment_ids > 0).sum().astype(jnp.float32),
    }
    if lr_fn is not None:
        metrics["lr"] = lr_fn(state.step)
    new_state = dataclasses.replace(
        state, step=state.step + 1, trainable=trainable, opt_state=opt_state
    )
    return new_state, metrics
