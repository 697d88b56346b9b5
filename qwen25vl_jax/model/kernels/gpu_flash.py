"""Flash attention for NVIDIA GPUs in Pallas (Triton): segment ids, padding, causal, GQA.

Adapted from JAX's `jax.experimental.pallas.ops.gpu.attention` (Apache 2.0; jax 0.10.2), which
falls short for us in four ways, each changed here:
- one segment-id array shared by queries and keys, and segment 0 attends to segment 0: here
  q and kv ids are separate and 0 (padding) is never attended to;
- no GQA (k, v per query head): here the k / v block of query head n is kv head n // G, and
  the backward sums the per-query-head dk, dv over each group;
- a query row with no key to attend to (a pad row) is not defined: here its probabilities are
  masked to zero explicitly, so the row outputs 0 and contributes no gradient;
- lengths must be block multiples: here the wrapper pads them (segment 0) and the head
  dimension to a power of two (zeros change no dot product), and slices the output back.
Never materialises [T, S]: the grid walks (query block, batch, head) and loops over the key
blocks that its rows' segments reach (`segment_spans`; causal: not past the diagonal), keeping
the running max / sum of the online softmax.

Block sizes are JAX's defaults (forward 128 x 128, backward 32 x 32), not tuned on a GPU yet.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from qwen25vl_jax.model.attention import NEG_INF
from qwen25vl_jax.model.kernels.padding import needs_interpret, pad_to_blocks

LOG2E = math.log2(math.e)  # the kernel works in base 2: e^x = 2^(x log2 e)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes (powers of two): forward query / key blocks, backward block (both axes)."""

    q: int = 128
    k: int = 128
    bwd: int = 32


BLOCKS = Blocks()


def _mask(q_seg, k_seg, q_pos, k_pos, causal: bool):
    """bool [bq, bk]: same non-zero segment (and key <= query when causal)."""
    m = (q_seg[:, None] == k_seg[None, :]) & (k_seg[None, :] > 0)
    return m & (q_pos[:, None] >= k_pos[None, :]) if causal else m


def segment_spans(q_seg: jax.Array, k_seg: jax.Array) -> tuple[jax.Array, ...]:
    """Where each row's partners lie, so the kernels loop over those blocks only.

    q_seg: int32 [B, T]; k_seg: int32 [B, S]. Returns int32 (keys_first, keys_last) [B, T]:
    the first and last key slot of each query's segment (S and -1 for padding or a segment with
    no key), and (queries_first, queries_last) [B, S]: the first and last query slot of each
    key's segment. Linear in T and S. Ids above max(T, S) are merged, which only widens the
    spans, so a loop over them still visits every partner.
    """
    t, s = q_seg.shape[1], k_seg.shape[1]
    n = max(t, s) + 1
    ids = lambda seg: jnp.clip(seg, 0, n - 1)

    def per_id(seg, op):  # [B, n]: op over the slots of each id
        slots = jnp.broadcast_to(jnp.arange(seg.shape[1], dtype=jnp.int32), seg.shape)
        return jax.vmap(lambda i, p: op(p, i, num_segments=n))(ids(seg), slots)

    def spans(seg, other, length):  # for each slot of seg: [first, last] of its id in other
        look = lambda table: jnp.take_along_axis(table, ids(seg), axis=1)
        first = jnp.clip(look(per_id(other, jax.ops.segment_min)), 0, length)
        last = jnp.clip(look(per_id(other, jax.ops.segment_max)), -1, length - 1)
        real = seg > 0
        return jnp.where(real, first, length), jnp.where(real, last, -1)

    return (*spans(q_seg, k_seg, s), *spans(k_seg, q_seg, t))


def _block_range(first, last, block: int):
    """[lo, hi) of the blocks holding slots first.min() .. last.max() (an empty range if none)."""
    return lax.div(jnp.min(first), block), lax.div(jnp.max(last) + block, block)


def _forward_kernel(*refs, scale, causal, block_q, block_k):
    """One (query block, batch, head): q_ref [bq, H]; k_ref, v_ref [S, H]; kfirst_ref,
    klast_ref int32[bq] (`segment_spans`); o_ref [bq, H]; lse_ref float32[bq] (base-2
    log-sum-exp of the scaled logits). Loops over the key blocks the rows' segments reach
    (and, when causal, not past the diagonal)."""
    q_ref, k_ref, v_ref, qseg_ref, kseg_ref, kfirst_ref, klast_ref, o_ref, lse_ref = refs
    start_q = pl.program_id(0)
    q = q_ref[...]
    q_seg = qseg_ref[...]
    q_pos = start_q * block_q + jnp.arange(block_q)

    def body(start_k, carry):
        o, m, denom = carry
        ks = pl.ds(start_k * block_k, block_k)
        qk = plgpu.dot(q, k_ref[ks, :].T) * (scale * LOG2E)  # [bq, bk] float32
        mask = _mask(q_seg, kseg_ref[ks], q_pos, start_k * block_k + jnp.arange(block_k), causal)
        qk = jnp.where(mask, qk, NEG_INF)
        m_next = jnp.maximum(m, qk.max(axis=-1))
        correction = jnp.exp2(m - m_next)
        p = jnp.where(mask, jnp.exp2(qk - m_next[:, None]), 0.0)
        v = v_ref[ks, :]
        o = correction[:, None] * o + plgpu.dot(p.astype(v.dtype), v)
        return o, m_next, correction * denom + p.sum(axis=-1)

    lo, upper = _block_range(kfirst_ref[...], klast_ref[...], block_k)
    if causal:
        upper = jnp.minimum(upper, lax.div(block_q * (start_q + 1) + block_k - 1, block_k))
    init = (
        jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32),
        jnp.full((block_q,), NEG_INF, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
    )
    o, m, denom = lax.fori_loop(jnp.minimum(lo, upper), upper, body, init)
    denom = jnp.where(denom > 0, denom, 1.0)  # a row with no key: o is 0 already
    lse_ref[...] = m + jnp.log2(denom)
    o_ref[...] = (o / denom[:, None]).astype(o_ref.dtype)


def _backward_kernel(*refs, scale, causal, block):
    """One (batch, head, block b): dk, dv of key block b over the query blocks, then dq of
    query block b over the key blocks. q_ref, do_ref [T, H]; k_ref, v_ref [S, H]; lse_ref,
    delta_ref float32[T]; k/q first/last refs: `segment_spans` ([T] and [S]); dq_ref [block, H];
    dk_ref, dv_ref [block, H] (this query head's share). Loops only over the blocks that the
    segments (and causality) connect.
    """
    (
        q_ref,
        k_ref,
        v_ref,
        qseg_ref,
        kseg_ref,
        kfirst_ref,
        klast_ref,
        qfirst_ref,
        qlast_ref,
        do_ref,
        lse_ref,
        delta_ref,
        dq_ref,
        dk_ref,
        dv_ref,
    ) = refs
    b = pl.program_id(2)
    span = b * block + jnp.arange(block)

    def probs(q, qs, k_seg, ks_pos, q_pos, k):
        qk = plgpu.dot(q, k.T) * (scale * LOG2E)
        mask = _mask(qseg_ref[qs], k_seg, q_pos, ks_pos, causal)
        return jnp.where(mask, jnp.exp2(qk - lse_ref[qs][:, None]), 0.0)

    kb = pl.ds(b * block, block)
    k, v, k_seg = k_ref[kb, :], v_ref[kb, :], kseg_ref[kb]

    def dkdv(start_q, carry):
        dk, dv = carry
        qs = pl.ds(start_q * block, block)
        q, do = q_ref[qs, :], do_ref[qs, :]
        p = probs(q, qs, k_seg, span, start_q * block + jnp.arange(block), k)
        dv = dv + plgpu.dot(p.astype(do.dtype).T, do)
        ds = p * (plgpu.dot(do, v.T) - delta_ref[qs][:, None]) * scale
        return dk + plgpu.dot(ds.astype(q.dtype).T, q), dv

    zeros = jnp.zeros((block, k_ref.shape[-1]), jnp.float32)
    lo, hi = _block_range(qfirst_ref[kb], qlast_ref[kb], block)
    lo = jnp.maximum(lo, b) if causal else lo
    dk, dv = lax.fori_loop(jnp.minimum(lo, hi), hi, dkdv, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)

    qb = pl.ds(b * block, block)
    q, do, delta = q_ref[qb, :], do_ref[qb, :], delta_ref[qb]

    def dq_step(start_k, dq):
        ks = pl.ds(start_k * block, block)
        k, v = k_ref[ks, :], v_ref[ks, :]
        p = probs(q, qb, kseg_ref[ks], start_k * block + jnp.arange(block), span, k)
        ds = p * (plgpu.dot(do, v.T) - delta[:, None]) * scale
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    lo, hi = _block_range(kfirst_ref[qb], klast_ref[qb], block)
    hi = jnp.minimum(hi, b + 1) if causal else hi
    dq = lax.fori_loop(jnp.minimum(lo, hi), hi, dq_step, zeros)
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _forward(q, k, v, ids, scale, causal, blocks: Blocks, interpret):
    """q [B, T, N, H], k, v [B, S, K, H] (block multiples); ids: (q_seg, k_seg, *segment_spans)
    -> out [B, T, N, H], lse [B, N, T]."""
    q_seg, k_seg, kfirst, klast, _, _ = ids
    b, t, n, h = q.shape
    s, groups = k.shape[1], n // k.shape[2]
    kernel = functools.partial(
        _forward_kernel, scale=scale, causal=causal, block_q=blocks.q, block_k=blocks.k
    )
    kv_spec = pl.BlockSpec((None, s, None, h), lambda i, j, m: (j, 0, m // groups, 0))
    q_rows = pl.BlockSpec((None, blocks.q), lambda i, j, m: (j, i))
    return pl.pallas_call(
        kernel,
        grid=(t // blocks.q, b, n),
        in_specs=[
            pl.BlockSpec((None, blocks.q, None, h), lambda i, j, m: (j, i, m, 0)),
            kv_spec,
            kv_spec,
            q_rows,
            pl.BlockSpec((None, s), lambda i, j, m: (j, 0)),
            q_rows,
            q_rows,
        ],
        out_specs=[
            pl.BlockSpec((None, blocks.q, None, h), lambda i, j, m: (j, i, m, 0)),
            pl.BlockSpec((None, None, blocks.q), lambda i, j, m: (j, m, i)),
        ],
        out_shape=[q, jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4 if h <= 64 else 8, num_stages=2),
        interpret=interpret,
        name="flash_forward_segments",
    )(q, k, v, q_seg, k_seg, kfirst, klast)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, ids, scale, causal, blocks, interpret):
    return _forward(q, k, v, ids, scale, causal, blocks, interpret)[0]


def _flash_fwd(q, k, v, ids, scale, causal, blocks, interpret):
    out, lse = _forward(q, k, v, ids, scale, causal, blocks, interpret)
    return out, (q, k, v, ids, out, lse)


def _flash_bwd(scale, causal, blocks: Blocks, interpret, res, d_out):
    q, k, v, ids, out, lse = res
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    groups, block = n // kh, blocks.bwd
    # delta = rowsum(dO * O): [B, N, T], linear in T, so plain XLA
    delta = jnp.einsum("BTNH,BTNH->BNT", d_out.astype(jnp.float32), out.astype(jnp.float32))
    full_q = pl.BlockSpec((None, t, None, h), lambda i, j, m: (i, 0, j, 0))
    full_kv = pl.BlockSpec((None, s, None, h), lambda i, j, m: (i, 0, j // groups, 0))
    row = pl.BlockSpec((None, None, t), lambda i, j, m: (i, j, 0))
    out_block = pl.BlockSpec((None, block, None, h), lambda i, j, m: (i, m, j, 0))
    per_head = jax.ShapeDtypeStruct((b, s, n, h), k.dtype)
    q_ids = pl.BlockSpec((None, t), lambda i, j, m: (i, 0))
    k_ids = pl.BlockSpec((None, s), lambda i, j, m: (i, 0))
    dq, dk, dv = pl.pallas_call(
        functools.partial(_backward_kernel, scale=scale, causal=causal, block=block),
        grid=(b, n, s // block),
        in_specs=[
            full_q,
            full_kv,
            full_kv,
            q_ids,
            k_ids,
            q_ids,
            q_ids,
            k_ids,
            k_ids,
            full_q,
            row,
            row,
        ],
        out_specs=[out_block, out_block, out_block],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), per_head, per_head],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="flash_backward_segments",
    )(q, k, v, *ids, d_out, lse, delta)
    group_sum = lambda d: d.reshape(b, s, kh, groups, h).sum(3).astype(k.dtype)
    return dq, group_sum(dk), group_sum(dv), (None,) * len(ids)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q, k, v, *, q_segments, kv_segments, causal: bool, scale: float, blocks: Blocks | None = None
) -> jax.Array:
    """Self-attention (T == S) of q [B, T, N, H] over k, v [B, T, K, H]; segments int [B, T]
    (0 = padding). Returns [B, T, N, H] (zeros on pad query rows). Interpreted off GPUs."""
    blocks = blocks or BLOCKS
    b, t, n, h = q.shape
    # short rows (the ViT's windows) take blocks no longer than the row
    fit = lambda size: min(size, max(16, pl.next_power_of_2(t)))
    blocks = Blocks(fit(blocks.q), fit(blocks.k), fit(blocks.bwd))
    hp = pl.next_power_of_2(h)
    if hp != h:
        widen = lambda a: jnp.pad(a, [(0, 0)] * 3 + [(0, hp - h)])
        q, k, v = widen(q), widen(k), widen(v)
    _, (q, k, v, qs, ks) = pad_to_blocks(
        max(blocks.q, blocks.k, blocks.bwd),
        q,
        k,
        v,
        q_segments.astype(jnp.int32),
        kv_segments.astype(jnp.int32),
    )
    ids = (qs, ks, *segment_spans(qs, ks))
    out = _flash(q, k, v, ids, scale, causal, blocks, needs_interpret("gpu"))
    return out[:, :t, :, :h]
