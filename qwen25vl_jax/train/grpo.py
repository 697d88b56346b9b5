"""GRPO: group-normalised advantages and the clipped policy-gradient objective with a k3 KL.

For each prompt, G completions are sampled from the current policy (`train/rollout.py`) and
scored (`train/rewards.py`). The advantage of completion i of group g is

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)      (std with ddof=1, as TRL; or r_i - mean_g)

spread over its tokens. Per completion token t, with rho_t = exp(logp_t - old_logp_t):

    loss_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta k3_t,
    k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (Schulman's low-variance estimator)

summed over every completion token of the global batch and divided by their number (token-level
normalisation, as DAPO: a long answer weighs by its tokens, not as one sequence). eps_low !=
eps_high is DAPO's asymmetric clip ("clip-higher"). beta = 0 reads no reference log-probs at all
(the rollout then runs no reference forward). log-probs are under softmax(logits /
temperature), the quantity the sampler reports (`inference/sampling.token_logprob`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from qwen25vl_jax.model.inputs import Batch, _axes
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.train.losses import token_logprobs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RLBatch(Batch):
    """`Batch` (loss_mask = 1 where the target is a completion token) plus, at the positions
    predicting each completion token (targets[b, l] is the token), float32[B, L] each:
    old_logprobs: its log-prob under the policy that sampled it; ref_logprobs: under the
    reference (zeros when beta = 0); advantages: its completion's advantage."""

    old_logprobs: np.ndarray = _axes("batch", "length")
    ref_logprobs: np.ndarray = _axes("batch", "length")
    advantages: np.ndarray = _axes("batch", "length")


def group_advantages(rewards, group_size: int, *, scale: bool = True, eps: float = 1e-4):
    """float32[N] advantages of N = groups x group_size rewards (each group's completions
    consecutive): reward minus its group's mean, divided by the group's std (ddof=1) + eps when
    `scale` (Dr. GRPO: scale=False)."""
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group's mean is the baseline): {group_size}")
    adv = r - r.mean(1, keepdims=True)
    if scale:
        adv = adv / (r.std(1, ddof=1, keepdims=True) + eps)
    return adv.reshape(-1).astype(np.float32)


def varied_groups(rewards, group_size: int) -> np.ndarray:
    """bool[N / group_size]: groups whose rewards are not all equal (DAPO's dynamic sampling
    keeps only these: an all-equal group has zero advantage and only dilutes the batch)."""
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    return np.ptp(r, axis=1) > 0


@dataclasses.dataclass(frozen=True)
class GRPOLoss:
    """The clipped policy-gradient objective (module docstring), an `Objective` of `RLBatch`es.

    temperature: the sampler's (log-probs under logits / temperature; 0 = greedy = 1).
    eps_low, eps_high: the ratio's clip range [1 - eps_low, 1 + eps_high]. kl_coef: beta.
    chunk: positions per chunk of the log-prob computation (`losses.token_logprobs`).
    Metrics (per completion token): clip_fraction (tokens whose clipped term is the one in
    effect), kl (the k3 estimate; only when kl_coef > 0)."""

    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_coef: float = 0.0
    chunk: int = 1024
    batch_type: ClassVar[type] = RLBatch
    count_name: ClassVar[str] = "completion_tokens"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("clip_fraction", "kl") if self.kl_coef else ("clip_fraction",)

    def logprobs(self, model: Qwen25VL, batch: Batch, opts: RunOptions) -> jax.Array:
        """float32[B, L]: log p(targets) under softmax(logits / temperature)."""
        scale = self.temperature or 1.0
        return token_logprobs(
            model.hidden(batch, opts),
            lambda h: model.decoder.logits(h).astype(jnp.float32) / scale,
            batch.targets,
            chunk=self.chunk,
            unroll=opts.unroll,
        )

    def __call__(self, model: Qwen25VL, batch: RLBatch, opts: RunOptions):
        return token_loss(
            self.logprobs(model, batch, opts),
            batch.old_logprobs,
            batch.ref_logprobs if self.kl_coef else None,
            batch.advantages,
            batch.loss_mask,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            kl_coef=self.kl_coef,
        )


def token_loss(logp, old_logp, ref_logp, adv, mask, *, eps_low, eps_high, kl_coef):
    """(loss sum, token count, {"clip_fraction": sum, "kl": sum (when kl_coef)}) of the module
    docstring's per-token loss. logp, old_logp, adv, mask: float32[B, L]; ref_logp: float32[B, L]
    or None (kl_coef = 0: never read)."""
    on = mask > 0  # off-mask entries are zeroed before exp: no inf * 0 = NaN
    ratio = jnp.exp(jnp.where(on, logp - old_logp, 0.0))
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -jnp.minimum(ratio * adv, clipped * adv)
    metrics = {"clip_fraction": ((clipped * adv < ratio * adv) * mask).sum()}
    if kl_coef:
        d = jnp.where(on, ref_logp - logp, 0.0)
        k3 = jnp.exp(d) - d - 1.0
        loss = loss + kl_coef * k3
        metrics["kl"] = (k3 * mask).sum()
    return (loss * mask).sum(), mask.sum(), metrics
