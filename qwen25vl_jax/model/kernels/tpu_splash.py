"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) from segment ids.

Splash takes the static part of the mask (causal or full) as a block-sparse mask it analyses at
trace time, and the dynamic part (packed samples) as `SegmentIds`; blocks that the causal mask
empties are skipped, and no [T, S] array exists. Our conventions on top:
- GQA: one MQA kernel (one k / v head shared by G query heads) vmapped over the kv heads and
  the batch;
- segment 0 is padding: splash lets 0 attend to 0, which only pad queries do, and their rows
  are zeroed afterwards (real segments never equal 0);
- lengths are padded (segment 0) to a multiple of the block; the block is 512 for rows of at
  least 2,048 tokens (MaxText's default) and 128 below, the smallest TPU tile;
- scale: splash has none, so q is scaled first, in q's dtype as the `xla` backend does.
Tested in interpret mode on the CPU only (tests/test_attention_kernels.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from qwen25vl_jax.model.kernels.padding import needs_interpret, pad_to_blocks


def block_size(length: int) -> int:
    return 512 if length >= 2048 else 128


def _kernel(length: int, groups: int, causal: bool, block: int, interpret: bool):
    """An MQA splash kernel for `groups` query heads over `length` (a block multiple) slots."""
    shape = (length, length)
    head = masks.CausalMask(shape) if causal else masks.FullMask(shape)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return splash.make_splash_mqa(
        masks.MultiHeadMask([head] * groups),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def flash_attention(q, k, v, *, q_segments, kv_segments, causal: bool, scale: float) -> jax.Array:
    """Self-attention (T == S) of q [B, T, N, H] over k, v [B, T, K, H]; segments int [B, T]
    (0 = padding). Returns [B, T, N, H] (zeros on pad query rows). Interpreted off TPUs."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    block = block_size(t)
    length, (q, k, v, qs, ks) = pad_to_blocks(
        block,
        q * jnp.asarray(scale, q.dtype),
        k,
        v,
        q_segments.astype(jnp.int32),
        kv_segments.astype(jnp.int32),
    )
    kernel = _kernel(length, n // kh, causal, block, needs_interpret("tpu"))
    qg = q.reshape(b, length, kh, n // kh, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, H]

    def one_row(qg, k, v, qs, ks):  # qg [K, G, T, H]; k, v [K, S, H]
        ids = splash.SegmentIds(qs, ks)
        return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(qg, k, v)

    out = jax.vmap(one_row)(qg, kt, vt, qs, ks)  # [B, K, G, T, H]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, length, n, h)[:, :t]
    return jnp.where(q_segments[:, :, None, None] > 0, out, 0).astype(q.dtype)
