"""Per-token log-probabilities and next-token cross-entropy, without materialising [B, L, V]
logits: the logits are computed chunk by chunk of positions and recomputed in the backward pass.
Every training objective (next-token, DPO, GRPO) reads its token log-probs from here."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(
    hidden: jax.Array,
    logits_fn,
    targets: jax.Array,
    *,
    chunk: int = 1024,
    unroll: bool = False,
) -> jax.Array:
    """log p(targets) under the model: float32 [B, L].

    hidden: [B, L, D] final hidden states; logits_fn: [B, C, D] -> float32 [B, C, V];
    targets: int [B, L] (any id where unused: the caller masks). Logits are computed `chunk`
    positions at a time under `jax.checkpoint`, so peak memory holds one [B, chunk, V] block
    instead of [B, L, V] (5 GB at L=8192, V=152k).
    """
    b, length, _ = hidden.shape
    chunk = min(chunk, length)
    pad = -length % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (length + pad) // chunk

    def one(h, t):
        logits = logits_fn(h).astype(jnp.float32)
        picked = jnp.take_along_axis(logits, t[..., None], -1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    if n == 1:  # one block: nothing to save by recomputing it in the backward pass
        return one(hidden, targets)[:, :length]
    one = jax.checkpoint(one)
    split = lambda a: jnp.moveaxis(a.reshape(b, n, chunk, *a.shape[2:]), 1, 0)  # noqa: E731
    _, out = jax.lax.scan(
        lambda c, xs: (c, one(*xs)), None, (split(hidden), split(targets)), unroll=unroll
    )
    return jnp.moveaxis(out, 0, 1).reshape(b, n * chunk)[:, :length]


def chunked_cross_entropy(
    hidden: jax.Array,
    logits_fn,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk: int = 1024,
    unroll: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, number of supervised tokens): float32 scalars.

    mask: float32 [B, L], 1 = supervised; the rest as `token_logprobs`.
    """
    logp = token_logprobs(hidden, logits_fn, targets, chunk=chunk, unroll=unroll)
    return -(logp * mask).sum(), mask.sum()


def per_sample_mean(
    token_loss: jax.Array, mask: jax.Array, segment_ids: jax.Array, power: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Each packed sample's mean token loss, weighted by n ** power for its n supervised tokens:
    (sum over samples of n ** power * mean, sum over samples of n ** power), float32 scalars.
    Their ratio is the per-sample average for power 0 and the per-token one for power 1.

    token_loss, mask: float32 [B, L]; segment_ids: int [B, L], one id per packed sample of a
    row (0 = padding, never supervised). Sums run per (row, segment) with `segment_sum`, so
    nothing of size [L, L] is formed.
    """
    b, length = segment_ids.shape
    ids = (jnp.arange(b, dtype=jnp.int32)[:, None] * length + segment_ids).reshape(-1)
    seg_sum = lambda x: jax.ops.segment_sum(x.reshape(-1), ids, b * length)  # noqa: E731
    loss, tokens = seg_sum(token_loss * mask), seg_sum(mask)
    has = tokens > 0
    n = jnp.where(has, tokens, 1.0)
    weight = jnp.where(has, n**power, 0.0)
    return (weight * loss / n).sum(), weight.sum()
