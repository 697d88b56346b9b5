"""Attention over a sequence split along the mesh's `context` axis: ring or all-gather.

With c devices on `context`, device i holds the contiguous slots [i * T/c, (i + 1) * T/c) of
every row: its queries, keys, values and segment ids. Queries stay where they are; keys and
values come from every shard:

`ring`: c steps; at each, device i attends its queries to the key/value block it holds (with
    that block's segment ids and its global slot offset), folds the result into a running
    softmax (max, sum and output in float32), and passes the block to device i + 1
    (`ppermute`). A device holds one foreign block at a time.
`all_gather`: the keys, values and segment ids of all shards are gathered (K/V heads only:
    small under GQA), then folded the same way with no communication in the loop.

Both fold KEY_CHUNK keys at a time and recompute each chunk's [T/c, KEY_CHUNK] logits in the
backward pass, so no [T, T] (nor [T/c, T]) array exists. Every chunk is folded, even one
wholly in the future or of other packed samples (as the `xla` path computes its whole masked
[T, T]): skipping them needs a cond that XLA made quadratic in memory (see `fold_block`). They
are exact: the running softmax with the finite mask constant `NEG_INF` gives the dense
softmax's weights, even for a pad query with no key (the mean of all values, as `xla`).
Causality and packing use *global* slots and segment ids, so a packed sample that spans
shards attends across them and a query never sees a later shard's keys. Blocks use the `xla`
maths whatever the attention backend (the kernels return no softmax statistics to merge).

Which is cheaper: see BUILD_NOTES "Context parallelism" (measured on 8 fake CPU devices).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwen25vl_jax.model.attention import (
    NEG_INF,
    ContextImpl,
    group_queries,
    masked_logits,
    segment_mask,
    shard_specs,
    ungroup_heads,
)

AXIS = "context"
KEY_CHUNK = 256  # keys per online-softmax step: a step's logits are [B, N, T/c, KEY_CHUNK]


def context_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segments: jax.Array,
    kv_segments: jax.Array,
    causal: bool,
    scale: float,
    impl: ContextImpl = ContextImpl.RING,
) -> jax.Array:
    """`attention` of q [B, T, N, H] over k, v [B, T, K, H] split along T over `context`.

    Runs under the ambient mesh (`jax.set_mesh`), whose `context` size c divides T.
    q_segments, kv_segments: int [B, T] (0 = padding). Returns [B, T, N, H] in q's dtype, split
    as q. Rows split over the mesh's batch axes and heads over `tensor` where they divide
    (heads only when both N and K do, so each shard keeps whole query groups).
    """
    mesh = jax.sharding.get_abstract_mesh()
    qkv_spec, seg_spec = shard_specs(q, k, mesh, length=AXIS)
    body = _ring if ContextImpl(impl) == ContextImpl.RING else _all_gather
    fn = jax.shard_map(
        functools.partial(body, causal=causal, scale=scale),
        mesh=mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec, seg_spec),
        out_specs=qkv_spec,
    )
    return fn(q, k, v, q_segments, kv_segments)


def _all_gather(q, k, v, q_seg, kv_seg, *, causal: bool, scale: float) -> jax.Array:
    """One shard: local queries q [B, t, N, H] against the gathered keys [B, c * t, K, H]."""
    t, kh = q.shape[1], k.shape[2]
    gather = lambda x: jax.lax.all_gather(x, AXIS, axis=1, tiled=True)  # noqa: E731
    k, v, kv_seg = gather(k), gather(v), gather(kv_seg)
    qg = group_queries(q, kh, scale)  # [B, K, G, t, H]
    offset = jax.lax.axis_index(AXIS) * t  # the global slot of this shard's first query
    block = (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), kv_seg)  # heads-major
    stats = fold_block(_empty_stats(qg), qg, q_seg, block, offset, causal=causal)
    return _finish(stats, q.dtype)


def _ring(q, k, v, q_seg, kv_seg, *, causal: bool, scale: float) -> jax.Array:
    """One shard of the ring: q [B, t, N, H] stays; the blocks k, v [B, t, K, H] and their
    segment ids [B, t] travel i -> i + 1 for c - 1 hops. At step s device i holds the block of
    shard (i - s) mod c, whose first slot is the global slot t * ((i - s) mod c)."""
    c, i = jax.lax.axis_size(AXIS), jax.lax.axis_index(AXIS)
    t, kh = q.shape[1], k.shape[2]
    qg = group_queries(q, kh, scale)  # [B, K, G, t, H]
    block = (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), kv_seg)  # heads-major
    perm = [(j, (j + 1) % c) for j in range(c)]

    def fold(stats, block, step):
        src = (i - step) % c
        offset = (i - src) * t  # this shard's first query, in slots after the block's first key
        return fold_block(stats, qg, q_seg, block, offset, causal=causal)

    def hop(carry, step):
        stats, block = carry
        stats = fold(stats, block, step)
        block = jax.tree.map(lambda x: jax.lax.ppermute(x, AXIS, perm), block)
        return (stats, block), None

    (stats, block), _ = jax.lax.scan(hop, (_empty_stats(qg), block), jnp.arange(c - 1))
    return _finish(fold(stats, block, c - 1), q.dtype)  # the last block: no hop after it


def fold_block(stats, qg, q_seg, block, offset, *, causal: bool, chunk: int = KEY_CHUNK):
    """Folds one block of keys into the running softmax, `chunk` keys at a time.

    qg: grouped queries [B, K, G, t, H]; q_seg: [B, t]; block: (k, v heads-major [B, K, s, H],
    segment ids [B, s]); offset: int32[] global slot of the first query minus that of the
    block's first key. Each chunk's [t, chunk] logits are recomputed in the backward pass
    (`jax.checkpoint`), so none is saved.
    """
    k, v, seg = block
    s = k.shape[2]
    chunk = max(d for d in range(1, min(chunk, s) + 1) if s % d == 0)
    n = s // chunk

    def split(x, ax):  # axis ax of size s -> a leading [n] axis of chunks
        return jnp.moveaxis(x.reshape(*x.shape[:ax], n, chunk, *x.shape[ax + 1 :]), ax, 0)

    # no chunk is skipped, even one wholly in the future or of other packed samples: a
    # lax.cond here made XLA's temp memory grow as (L / c)^2 (1.27 GB / device at L = 16k,
    # context 8, against 0.30 GB without; BUILD_NOTES "Context parallelism")
    @jax.checkpoint
    def one(stats, xs):
        j, kc, vc, sc = xs
        mask = segment_mask(q_seg, sc, causal=causal, q_offset=offset - j * chunk)
        return online_softmax_update(stats, masked_logits(qg, kc, mask), vc), None

    stats, _ = jax.lax.scan(one, stats, (jnp.arange(n), split(k, 2), split(v, 2), split(seg, 1)))
    return stats


def _empty_stats(qg: jax.Array):
    """(max, sum, out) before any key: NEG_INF, 0, 0 (float32). zeros_like keeps qg's
    sharding type (varying over the mesh axes that split it), as a scan's carry must."""
    zeros = jnp.zeros_like(qg, jnp.float32)  # [B, K, G, t, H]
    return zeros[..., 0] + NEG_INF, zeros[..., 0], zeros


def _finish(stats, dtype) -> jax.Array:
    """The attention output [B, t, N, H] in `dtype` from the final statistics."""
    _, total, out = stats
    return ungroup_heads(out / total[..., None]).astype(dtype)


def online_softmax_update(stats, logits: jax.Array, v: jax.Array):
    """Folds one key block into running softmax statistics (all float32).

    stats: (max [B, K, G, t], sum [B, K, G, t], out [B, K, G, t, H]); logits: float32
    [B, K, G, t, s] (NEG_INF where masked); v: heads-major [B, K, s, H]. The max is a
    constant of the maths (the quotient out / sum does not depend on it), so no gradient
    flows through it.
    """
    m, total, out = stats
    m_new = jax.lax.stop_gradient(jnp.maximum(m, logits.max(axis=-1)))
    correction = jnp.exp(m - m_new)
    p = jnp.exp(logits - m_new[..., None])
    pv = jnp.einsum("BKGTS,BKSH->BKGTH", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, total * correction + p.sum(axis=-1), out * correction[..., None] + pv
