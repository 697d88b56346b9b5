"""The training step: a pure function of (TrainState, batch), jit-compiled once with explicit
shardings and the state donated.

What the step minimises is an `Objective`: a sum over the *global* batch (all micro-batches, all
devices) divided by a count, so every unit (a supervised token for next-token training, a pair
for DPO, a sampled token for GRPO) weighs the same whatever the packing, padding or accumulation.
`NextTokenLoss` is pre-training and SFT; `train/dpo.py` and `train/grpo.py` are the others.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from qwen25vl_jax.model.inputs import Batch, split_batch
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.param_paths import unflatten
from qwen25vl_jax.train.losses import chunked_cross_entropy, per_sample_mean, token_logprobs


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


class Objective(Protocol):
    """What a training step minimises.

    batch_type: the schema class of its batches (`Batch` or a subclass with more fields; the
    trainer shards and places them from its declared axes). count_name: what the count counts
    (a metric of that name reports it). metric_names: the metric sums it returns.
    Called on one (micro-)batch, it returns (loss sum, count, {name: metric sum}), float32
    scalars; the step divides the loss, its gradients and every metric sum by the global count.
    """

    batch_type: ClassVar[type]
    count_name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]

    def __call__(self, model: Qwen25VL, batch: Any, opts: RunOptions) -> tuple[Any, Any, dict]: ...


@dataclasses.dataclass(frozen=True)
class NextTokenLoss:
    """Next-token cross-entropy over supervised tokens (pre-training, SFT).

    chunk: positions per chunk of the cross-entropy, so [chunk, vocab] logits are the largest
    buffer of the loss."""

    chunk: int = 1024
    batch_type: ClassVar[type] = Batch
    count_name: ClassVar[str] = "supervised_tokens"
    metric_names: ClassVar[tuple[str, ...]] = ()

    def __call__(self, model: Qwen25VL, batch: Batch, opts: RunOptions):
        hidden = model.hidden(batch, opts)
        total, count = chunked_cross_entropy(
            hidden,
            model.decoder.logits,
            batch.targets,
            batch.loss_mask,
            chunk=self.chunk,
            unroll=opts.unroll,
        )
        return total, count, {}


@dataclasses.dataclass(frozen=True)
class SampleMeanLoss(NextTokenLoss):
    """Next-token cross-entropy averaged per packed sample (segment), then over samples with
    weights n ** power for a sample of n supervised tokens. `NextTokenLoss` weighs every token
    the same (power 1): a 2-token answer then counts 1/16 of a 33-token one; power 0 weighs
    every sample the same, power 0.5 is between (1/4).

    The count is the sum of the weights (samples, for power 0)."""

    power: float = 0.0
    count_name: ClassVar[str] = "sample_weight"

    def __call__(self, model: Qwen25VL, batch: Batch, opts: RunOptions):
        hidden = model.hidden(batch, opts)
        logp = token_logprobs(
            hidden, model.decoder.logits, batch.targets, chunk=self.chunk, unroll=opts.unroll
        )
        total, count = per_sample_mean(-logp, batch.loss_mask, batch.segment_ids, self.power)
        return total, count, {}


# StepConfig.loss_average: what weighs the same in the next-token objective
LOSS_AVERAGES = ("token", "sample", "sqrt")


def next_token_objective(average: str, chunk: int) -> Objective:
    """The next-token objective for `StepConfig.loss_average`: every supervised token weighs
    the same ("token"), every packed sample ("sample"), or a sample of n tokens sqrt(n)."""
    if average == "token":
        return NextTokenLoss(chunk=chunk)
    if average not in LOSS_AVERAGES:
        raise ValueError(f"loss_average must be one of {LOSS_AVERAGES}: {average!r}")
    return SampleMeanLoss(power=0.0 if average == "sample" else 0.5, chunk=chunk)


def objective_sums(
    trainable, frozen, batch, *, graphdef: nnx.GraphDef, opts: RunOptions, objective: Objective
):
    """`objective` of one (micro-)batch under the flat parameters `trainable` + `frozen`:
    (loss sum, (count, metric sums))."""
    model = nnx.merge(graphdef, unflatten({**trainable, **frozen}))
    total, count, sums = objective(model, batch, opts)
    return total, (count, sums)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    opts: RunOptions,
    objective: Objective = NextTokenLoss(),
    accum_steps: int = 1,
    lr_fn=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step over `batch`, accumulated over `accum_steps` micro-batches."""
    kw = dict(graphdef=graphdef, opts=opts, objective=objective)

    def micro(carry, mb):
        g_acc, l_acc, n_acc, m_acc = carry
        (loss, (count, sums)), g = jax.value_and_grad(
            lambda t: objective_sums(t, state.frozen, mb, **kw), has_aux=True
        )(state.trainable)
        add = functools.partial(jax.tree.map, jnp.add)
        return (add(g_acc, g), l_acc + loss, n_acc + count, add(m_acc, sums)), None

    zero = jnp.zeros((), jnp.float32)
    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    init = (zeros, zero, zero, {name: zero for name in objective.metric_names})
    if accum_steps == 1:
        (grads, loss_sum, count, sums), _ = micro(init, batch)
    else:
        (grads, loss_sum, count, sums), _ = jax.lax.scan(
            micro, init, split_batch(batch, accum_steps)
        )
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {
        "loss": loss_sum / denom,
        "grad_norm": optax.tree.norm(grads),
        objective.count_name: count,
        "real_tokens": (batch.segment_ids > 0).sum().astype(jnp.float32),
        **{name: total / denom for name, total in sums.items()},
    }
    if lr_fn is not None:
        metrics["lr"] = lr_fn(state.step)
    new_state = dataclasses.replace(
        state, step=state.step + 1, trainable=trainable, opt_state=opt_state
    )
    return new_state, metrics
