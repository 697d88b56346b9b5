"""The chunked token log-probs every objective reads equal a plain log-softmax, values and
gradients, with a chunk that does not divide the length (padding) and with one chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen25vl_jax.train.losses import chunked_cross_entropy, token_logprobs


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_token_logprobs_equal_log_softmax(chunk):
    rng = np.random.default_rng(0)
    b, length, d, v = 2, 7, 5, 11
    hidden = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
    mask = jnp.asarray(rng.random((b, length)) < 0.6, jnp.float32)

    def ours(h, w):
        return token_logprobs(h, lambda x: x @ w, targets, chunk=chunk)

    def plain(h, w):
        logp = jax.nn.log_softmax(h @ w, axis=-1)
        return jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]

    np.testing.assert_allclose(ours(hidden, w), plain(hidden, w), rtol=1e-6, atol=1e-6)
    weights = jnp.asarray(rng.normal(size=(b, length)), jnp.float32)
    g_ours = jax.grad(lambda h, w: (ours(h, w) * weights).sum(), (0, 1))(hidden, w)
    g_plain = jax.grad(lambda h, w: (plain(h, w) * weights).sum(), (0, 1))(hidden, w)
    for a, e in zip(g_ours, g_plain):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    total, count = chunked_cross_entropy(hidden, lambda x: x @ w, targets, mask, chunk=chunk)
    np.testing.assert_allclose(total, -(plain(hidden, w) * mask).sum(), rtol=1e-6)
    assert float(count) == float(mask.sum())


def torch_per_sample_mean(token_loss, mask, segment_ids, power):
    """The reference: every (row, segment > 0) with n supervised tokens adds n**power times
    its mean loss to the total and n**power to the count."""
    import torch

    total, count = token_loss.new_zeros(()), 0.0
    for r in range(segment_ids.shape[0]):
        for s in torch.unique(segment_ids[r]).tolist():
            sel = (segment_ids[r] == s) & (mask[r] > 0)
            if s > 0 and sel.any():
                n = mask[r][sel].sum()
                total = total + n**power * (token_loss[r] * mask[r])[sel].sum() / n
                count += float(n**power)
    return total, count


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_per_sample_mean_equals_torch_reference(power):
    import torch

    from qwen25vl_jax.train.losses import per_sample_mean

    rng = np.random.default_rng(1)
    # row 0: samples of 5, 2 (one supervised token) and 6 tokens, then padding; row 1: a sample
    # with no supervised token between two others; row 2: all padding
    segments = np.zeros((3, 16), np.int32)
    segments[0, :13] = [1] * 5 + [2] * 2 + [3] * 6
    segments[1, :] = [1] * 4 + [2] * 5 + [3] * 7
    mask = (rng.random((3, 16)) < 0.7) & (segments > 0)
    mask[0, 5:7] = [False, True]
    mask[1, 4:9] = False
    mask[0, :5] = True
    loss = rng.gamma(2.0, size=(3, 16)).astype(np.float32)
    weights = float(rng.normal())
    fmask = jnp.asarray(mask, jnp.float32)

    total, count = per_sample_mean(jnp.asarray(loss), fmask, segments, power)
    t_loss = torch.tensor(loss, dtype=torch.float64, requires_grad=True)
    t_total, t_count = torch_per_sample_mean(
        t_loss, torch.tensor(mask, dtype=torch.float64), torch.tensor(segments), power
    )
    np.testing.assert_allclose(float(count), t_count, rtol=1e-6)
    np.testing.assert_allclose(float(total), t_total.item(), rtol=1e-6)
    token_mean = (loss * mask).sum() / mask.sum()
    if power == 0.0:
        assert float(count) == 5  # samples with a supervised token
    if power == 1.0:  # the per-token average
        np.testing.assert_allclose(float(total) / float(count), token_mean, rtol=1e-6)
    else:  # a token of a short sample weighs more than one of a long sample
        assert abs(float(total) / float(count) - token_mean) > 1e-3
    (t_total * weights).backward()
    grad = jax.grad(lambda x: per_sample_mean(x, fmask, segments, power)[0] * weights)(
        jnp.asarray(loss)
    )
    np.testing.assert_allclose(grad, t_loss.grad.numpy(), rtol=1e-6, atol=1e-7)
