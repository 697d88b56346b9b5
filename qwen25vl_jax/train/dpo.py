"""Direct preference optimisation (DPO, Rafailov et al. 2023) as a training `Objective`.

A `PreferenceBatch` row holds P pairs; a pair is two segments (chosen, rejected) that gather the
same merged vision tokens, so the ViT and merger run once per pair (`data/assemble.py`). Each
reply's log-prob is the sum of its per-token log-probs (`losses.token_logprobs`) over its
supervised tokens (the response; the prompt is masked out by `data/preference.py`). With
policy log-probs pi_c, pi_r and reference log-probs ref_c, ref_r of one pair:

    h = (pi_c - pi_r) - (ref_c - ref_r)
    sigmoid: loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
             (eps = label_smoothing: conservative DPO, Mitchell 2023; eps = 0 is DPO)
    ipo:     loss = (h - 1 / (2 * beta))^2     (Azar et al. 2023, on summed log-probs; TRL
             divides the log-probs by the reply length first, we do not)

Rewards: beta * (pi - ref) of each reply; their margin and accuracy (chosen > rejected) are
metrics. The step divides every sum by the global number of valid pairs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp

from qwen25vl_jax.model.inputs import PreferenceBatch
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.train.losses import token_logprobs

LOSS_TYPES = ("sigmoid", "ipo")
REFERENCE_MODES = ("weights", "precomputed")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """The `dpo` section of a training config.

    beta: the KL strength (the loss's temperature). loss_type: "sigmoid" (DPO) or "ipo".
    label_smoothing: eps of conservative DPO (sigmoid only), in [0, 0.5). reference: "weights"
    (a frozen copy of the initial weights runs a forward before each step) or "precomputed"
    (the initial weights score every step's batch in a first pass; no copy is kept).
    pairs_per_row: P, the pairs a packed row holds (a static shape).
    """

    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0
    reference: Literal["weights", "precomputed"] = "weights"
    pairs_per_row: int = 2

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"dpo.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"dpo.reference must be one of {REFERENCE_MODES}: {self.reference!r}")
        if not self.beta > 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo.label_smoothing must be in [0, 0.5): {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("dpo.label_smoothing applies to the sigmoid loss only")
        if self.pairs_per_row < 1:
            raise ValueError(f"dpo.pairs_per_row must be >= 1, got {self.pairs_per_row}")


def pair_logps(
    token_logps: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, pair_segments: jax.Array
) -> jax.Array:
    """float32[B, P, 2]: each pair's chosen / rejected reply log-prob, summed over its segment's
    supervised tokens. token_logps, loss_mask: float32[B, L]; segment_ids: int32[B, L];
    pair_segments: int32[B, P, 2] (0 = no pair: sums to 0)."""
    # [B, P, 2, L] one-hot of segment membership: P is small, L is one row
    member = (segment_ids[:, None, None, :] == pair_segments[..., None]) & (
        pair_segments[..., None] > 0
    )
    return jnp.einsum("bl,bpcl->bpc", token_logps * loss_mask, member.astype(jnp.float32))


def sequence_logps(
    model: Qwen25VL, batch: PreferenceBatch, opts: RunOptions, *, chunk: int = 1024
) -> jax.Array:
    """float32[B, P, 2]: the model's reply log-probs of every pair of `batch` (policy and
    reference alike)."""
    hidden = model.hidden(batch, opts)
    logp = token_logprobs(
        hidden, model.decoder.logits, batch.targets, chunk=chunk, unroll=opts.unroll
    )
    return pair_logps(logp, batch.loss_mask, batch.segment_ids, batch.pair_segments)


def preference_loss(
    policy: jax.Array,
    reference: jax.Array,
    valid: jax.Array,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(loss sum, valid pairs, {metric: sum}) over pairs; float32 scalars.

    policy, reference: float32[..., 2] reply log-probs (chosen, rejected); valid: float32[...]
    (1 = a real pair). The formulas: see the module docstring."""
    h = (policy[..., 0] - policy[..., 1]) - (reference[..., 0] - reference[..., 1])
    if loss_type == "sigmoid":
        eps = label_smoothing
        loss = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
    elif loss_type == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    rewards = beta * jax.lax.stop_gradient(policy - reference)  # metrics only
    total = lambda x: (x * valid).sum()  # noqa: E731
    metrics = {
        "reward_margin": total(rewards[..., 0] - rewards[..., 1]),
        "reward_accuracy": total((rewards[..., 0] > rewards[..., 1]).astype(jnp.float32)),
        "chosen_rewards": total(rewards[..., 0]),
        "rejected_rewards": total(rewards[..., 1]),
        "chosen_logps": total(jax.lax.stop_gradient(policy[..., 0])),
        "rejected_logps": total(jax.lax.stop_gradient(policy[..., 1])),
    }
    return total(loss), valid.sum(), metrics


@dataclasses.dataclass(frozen=True)
class DPOLoss:
    """The DPO objective over `PreferenceBatch`es: per pair, `preference_loss` of the policy's
    reply log-probs against `batch.ref_logps`. chunk: positions per log-prob chunk."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    chunk: int = 1024
    batch_type: ClassVar[type] = PreferenceBatch
    count_name: ClassVar[str] = "pairs"
    metric_names: ClassVar[tuple[str, ...]] = (
        "reward_margin",
        "reward_accuracy",
        "chosen_rewards",
        "rejected_rewards",
        "chosen_logps",
        "rejected_logps",
    )

    @classmethod
    def from_config(cls, c: DPOConfig, chunk: int = 1024) -> DPOLoss:
        return cls(c.beta, c.loss_type, c.label_smoothing, chunk)

    def __call__(self, model: Qwen25VL, batch: PreferenceBatch, opts: RunOptions):
        policy = sequence_logps(model, batch, opts, chunk=self.chunk)
        valid = (batch.pair_segments[..., 0] > 0).astype(jnp.float32)
        return preference_loss(
            policy,
            batch.ref_logps,
            valid,
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
