"""The attention kernels equal the `xla` reference (forward and gradients) on random packed
batches: several segments per row, padding (segment 0), a ragged length, GQA. Off their own
hardware the kernels run in Pallas interpret mode, so these run on the CPU at small sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen25vl_jax.model.attention import attention, segment_mask
from qwen25vl_jax.model.kernels import gpu_flash


def _packed_batch(length: int, *, heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    """q [2, T, N, H], k, v [2, T, K, H] and segments [2, T]: row 0 holds three samples of
    ragged lengths then padding, row 1 left padding then one sample (as generation prompts)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((2, length), np.int32)
    a, b = length // 3, length - length // 5
    seg[0, :a], seg[0, a : a + 7], seg[0, a + 7 : b] = 1, 2, 3
    seg[1, 5:] = 1
    q = rng.normal(size=(2, length, heads, head_dim)).astype(np.float32)
    k, v = (rng.normal(size=(2, length, kv_heads, head_dim)).astype(np.float32) for _ in "kv")
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg)


def _forward_and_grads(backend, q, k, v, seg, causal, cotangent):
    def f(q, k, v):
        return attention(
            q, k, v, q_segments=seg, kv_segments=seg, causal=causal, scale=0.37, backend=backend
        )

    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(cotangent)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("backend, length, head_dim", [("pallas_gpu", 45, 12), ("splash", 150, 8)])
def test_kernel_equals_xla(monkeypatch, backend, length, head_dim, causal):
    # small GPU tiles, so the online softmax and the causal loop bounds span several blocks
    monkeypatch.setattr(gpu_flash, "BLOCKS", gpu_flash.Blocks(q=16, k=16, bwd=16))
    q, k, v, seg = _packed_batch(length, heads=4, kv_heads=2, head_dim=head_dim)
    real = np.asarray(seg) > 0
    # the loss reads real rows only (as the training loss): pad rows are unspecified per backend
    cot = jax.random.normal(jax.random.key(1), q.shape) * real[:, :, None, None]
    run = jax.jit(_forward_and_grads, static_argnums=(0, 5))
    out, grads = run(backend, q, k, v, seg, causal, cot)
    ref, ref_grads = run("xla", q, k, v, seg, causal, cot)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-5)
    assert not np.asarray(out)[~real].any(), "kernels give pad query rows zeros"
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=5e-5, err_msg=f"d{name}")
        assert np.abs(np.asarray(r)).max() > 1e-2  # the comparison is not of zeros


def test_decode_attends_to_valid_slots_up_to_its_own():
    """A decode step: one query at slot `q_offset` against a heads-major cache of S slots."""
    valid = jnp.asarray([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], jnp.int32)
    mask = segment_mask(jnp.ones((2, 1), jnp.int32), valid, causal=True, q_offset=jnp.int32(3))
    np.testing.assert_array_equal(mask[:, 0], [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]])
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(2, 1, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 2, 6, 8)), jnp.float32) for _ in "kv")  # [B,K,S,H]
    out = attention(
        q,
        k,
        v,
        q_segments=jnp.ones((2, 1), jnp.int32),
        kv_segments=valid,
        causal=True,
        scale=0.5,
        q_offset=jnp.int32(3),
        kv_heads_major=True,
    )
    # by hand: row 0 reads slots 1-3, row 1 slots 0-3; query head n reads kv head n // 2
    qn, kn, vn = np.asarray(q), np.asarray(k), np.asarray(v)
    for row, slots in ((0, [1, 2, 3]), (1, [0, 1, 2, 3])):
        kk, vv = kn[row][[0, 0, 1, 1]][:, slots], vn[row][[0, 0, 1, 1]][:, slots]  # [N, s, H]
        logits = np.einsum("NsH,NH->Ns", kk, qn[row, 0]) * 0.5
        p = np.exp(logits - logits.max(-1, keepdims=True))
        expected = np.einsum("Ns,NsH->NH", p / p.sum(-1, keepdims=True), vv)
        np.testing.assert_allclose(np.asarray(out)[row, 0], expected, atol=1e-6)


@pytest.mark.parametrize("backend", ["pallas_gpu", "splash"])
def test_whole_model_on_a_kernel_backend_equals_xla(tiny, backend):
    """The backends wired through the model: ViT windows and full blocks, packed decoder."""
    from flax import nnx

    from qwen25vl_jax.data.hf_format import inputs_from_hf
    from qwen25vl_jax.model.qwen25vl import RunOptions, forward
    from tests.cases import CASES, make_case

    arrays = make_case(tiny.cfg, CASES["batch2_left_pad"])
    inputs, _ = inputs_from_hf(tiny.cfg, arrays)
    run = jax.jit(forward, static_argnums=3)
    ref = np.asarray(run(*nnx.split(tiny.jax), inputs, RunOptions()))
    out = np.asarray(run(*nnx.split(tiny.jax), inputs, RunOptions(backend=backend)))
    real = arrays["attention_mask"].astype(bool)
    np.testing.assert_allclose(out[real], ref[real], atol=2e-5)


def test_segment_spans_bound_the_kernel_loops():
    """Each query's segment's key slots [first, last] (S / -1 on padding), and each key's
    segment's query slots: the pallas_gpu kernel loops over those blocks only."""
    seg = jnp.asarray([[1, 1, 2, 2, 2, 0, 3, 0]], jnp.int32)
    keys_first, keys_last, queries_first, queries_last = gpu_flash.segment_spans(seg, seg)
    np.testing.assert_array_equal(keys_first, [[0, 0, 2, 2, 2, 8, 6, 8]])
    np.testing.assert_array_equal(keys_last, [[1, 1, 4, 4, 4, -1, 6, -1]])
    np.testing.assert_array_equal(queries_first, keys_first)  # self-attention: the same
    np.testing.assert_array_equal(queries_last, keys_last)
    # with 2-slot blocks, the query block of slots 6-7 reads key block 3 only (not 0-2)
    lo, hi = gpu_flash._block_range(keys_first[0, 6:8], keys_last[0, 6:8], 2)
    assert (int(lo), int(hi)) == (3, 4)
    lo, hi = gpu_flash._block_range(keys_first[0, 4:6], keys_last[0, 4:6], 2)  # segment 2 + pad
    assert (int(lo), int(hi)) == (1, 3)
