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
