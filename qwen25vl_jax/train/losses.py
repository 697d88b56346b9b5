"""Next-token cross-entropy over loss-masked tokens, without materialising [B, L, V] logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunked_cross_entropy(
    hidden: jax.Array,
    logits_fn,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk: int = 1024,
    unroll: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Sum of token losses and number of supervised tokens.

    hidden: [B, L, D] final hidden states; logits_fn: [B, C, D] -> float32 [B, C, V];
    targets: int [B, L]; mask: float32 [B, L] (1 = supervised). Logits are computed chunk by
    chunk of `chunk` positions and recomputed in the backward pass (jax.checkpoint), so peak
    memory holds one [B, chunk, V] block instead of [B, L, V] (5 GB at L=8192, V=152k).
    """
    b, length, d = hidden.shape
    chunk = min(chunk, length)
    pad = -length % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
    n = (length + pad) // chunk
    split = lambda a: jnp.moveaxis(a.reshape(b, n, chunk, *a.shape[2:]), 1, 0)  # noqa: E731

    def one(h, t, m):
        logits = logits_fn(h).astype(jnp.float32)
        nll = (
            jax.nn.logsumexp(logits, axis=-1)
            - jnp.take_along_axis(logits, t[..., None], -1)[..., 0]
        )
        return (nll * m).sum()

    if n == 1:  # one block: nothing to save by recomputing it in the backward pass
        return one(hidden, targets, mask), mask.sum()
    one = jax.checkpoint(one)

    def body(total, xs):
        return total + one(*xs), None

    total, _ = jax.lax.scan(
        body,
        jnp.zeros((), jnp.float32),
        (split(hidden), split(targets), split(mask)),
        unroll=unroll,
    )
    return total, mask.sum()
