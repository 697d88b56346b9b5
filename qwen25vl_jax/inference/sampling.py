"""Next-token selection: greedy, or temperature / top-k / top-p sampling with an explicit key.

The warpers run in transformers' order (temperature, then top-k, then top-p) with its
semantics: top-k keeps every token whose logit reaches the k-th largest; top-p keeps the most
likely tokens whose probabilities sum to at least `top_p` (always at least one). `Sampling` is
a frozen dataclass, hashable, and passed to `jax.jit` as a static argument: greedy decoding
compiles no sort at all.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature: 0 = greedy (top_k / top_p ignored); top_k: 0 = off; top_p: 1.0 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def warp_logits(logits: jax.Array, params: Sampling) -> jax.Array:
    """float32[B, V] logits -> temperature-scaled logits, -inf outside the top-k / top-p set."""
    logits = logits.astype(jnp.float32) / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, params.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, _NEG_INF, logits)
    if params.top_p < 1.0:
        # As transformers' TopPLogitsWarper: in ascending order, drop the tokens whose
        # cumulative probability stays <= 1 - top_p, never the most likely one.
        asc = jnp.sort(logits, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
        drop = (cum <= 1.0 - params.top_p).at[:, -1].set(False)
        # The kept set is a suffix of the ascending order: its smallest logit is the cutoff.
        cutoff = jnp.min(jnp.where(drop, jnp.inf, asc), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, _NEG_INF, logits)
    return logits


def token_logprob(logits: jax.Array, tokens: jax.Array, params: Sampling) -> jax.Array:
    """log p(tokens) float32[B] under softmax(logits [B, V] / temperature) (temperature 1 when
    greedy): the temperature-scaled distribution *before* top-k / top-p truncation. That is the
    quantity a policy-gradient trainer can recompute from its hidden states (`train/grpo.py`:
    logits / temperature, chunked) without a sort over the vocabulary per position; with top-k
    and top-p off it is exactly the distribution sampled from."""
    scale = 1.0 if params.greedy else params.temperature
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / scale, axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None].astype(jnp.int32), -1)[:, 0]


def sample(logits: jax.Array, key: jax.Array, params: Sampling) -> jax.Array:
    """Next tokens int32[B] from float32 logits [B, V]; `key` is used only when sampling."""
    if params.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, warp_logits(logits, params), axis=-1).astype(jnp.int32)
