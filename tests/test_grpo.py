"""GRPO's advantages and per-token loss on hand-computed groups, and the loss and its gradient
against a PyTorch implementation of the same formula (float32)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen25vl_jax.train.grpo import GRPOLoss, group_advantages, token_loss, varied_groups


def test_group_advantages_hand_computed():
    rewards = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 0.0, 0.0]
    std = math.sqrt(4 * 0.25 / 3)  # ddof=1 over the group [1, 0, 0, 1]
    want = [0.5, -0.5, -0.5, 0.5]
    got = group_advantages(rewards, 4)
    np.testing.assert_allclose(got[:4], np.asarray(want) / (std + 1e-4), rtol=1e-6)
    np.testing.assert_array_equal(got[4:8], 0.0)  # an all-equal group teaches nothing
    std3 = math.sqrt((3 * 0.75**2 + 2.25**2) / 3)
    np.testing.assert_allclose(got[8:], np.asarray([-0.75, 2.25, -0.75, -0.75]) / (std3 + 1e-4),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(group_advantages(rewards, 4, scale=False)[:4], want)
    np.testing.assert_array_equal(varied_groups(rewards, 4), [True, False, True])
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages([1.0, 2.0], 1)


def hand_case():
    """One row of 3 positions; the last is padding holding junk that must not leak."""
    logp = jnp.asarray([[math.log(1.5), math.log(0.5), 50.0]])
    old = jnp.asarray([[0.0, 0.0, -50.0]])
    ref = jnp.asarray([[math.log(2.0) + math.log(1.5), math.log(0.5), jnp.nan]])
    adv = jnp.asarray([[1.0, -1.0, 7.0]])
    mask = jnp.asarray([[1.0, 1.0, 0.0]])
    return logp, old, ref, adv, mask


def test_token_loss_hand_computed():
    logp, old, ref, adv, mask = hand_case()
    # token 0: ratio 1.5, A = +1: min(1.5, 1.2) -> -1.2, clipped; token 1: ratio 0.5, A = -1:
    # min(-0.5, -0.8) = -0.8 -> +0.8, clipped
    total, count, m = token_loss(logp, old, None, adv, mask, eps_low=0.2, eps_high=0.2, kl_coef=0)
    assert float(total) == pytest.approx(-1.2 + 0.8) and float(count) == 2
    assert float(m["clip_fraction"]) == 2 and "kl" not in m
    # DAPO's clip-higher: the upper bound moves to 1.28, the lower stays at 0.8
    total, _, _ = token_loss(logp, old, None, adv, mask, eps_low=0.2, eps_high=0.28, kl_coef=0)
    assert float(total) == pytest.approx(-1.28 + 0.8)
    # inside the clip range nothing is clipped: ratio 1.1 with eps 0.2
    near = jnp.asarray([[math.log(1.1), math.log(0.95), 0.0]])
    total, _, m = token_loss(near, old, None, adv, mask, eps_low=0.2, eps_high=0.2, kl_coef=0)
    assert float(total) == pytest.approx(-1.1 + 0.95) and float(m["clip_fraction"]) == 0
    # k3: ref - logp = log 2 on token 0 (k3 = 2 - log 2 - 1), 0 on token 1 (k3 = 0)
    total, _, m = token_loss(logp, old, ref, adv, mask, eps_low=0.2, eps_high=0.2, kl_coef=0.1)
    k3 = 1.0 - math.log(2.0)
    assert float(m["kl"]) == pytest.approx(k3, rel=1e-6)
    assert float(total) == pytest.approx(-0.4 + 0.1 * k3, rel=1e-6)


def test_kl_coef_zero_reads_no_reference():
    assert GRPOLoss(kl_coef=0.0).metric_names == ("clip_fraction",)
    assert GRPOLoss(kl_coef=0.04).metric_names == ("clip_fraction", "kl")
    logp, old, _, adv, mask = hand_case()
    nan_ref = jnp.full_like(logp, jnp.nan)  # would poison the loss if it were read
    total, _, _ = token_loss(logp, old, nan_ref, adv, mask, eps_low=0.2, eps_high=0.2, kl_coef=0)
    assert np.isfinite(float(total))


def torch_grpo_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta):
    """The same formula as verl / TRL write it (PyTorch): token-mean of the clipped surrogate
    plus beta * k3."""
    import torch

    ratio = torch.exp(logp - old)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = torch.maximum(pg1, pg2)
    if beta:
        per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("eps_high, beta", [(0.2, 0.0), (0.28, 0.04)])
def test_loss_and_gradient_equal_pytorch(eps_high, beta):
    import torch

    rng = np.random.default_rng(0)
    shape = (3, 11)
    logp = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, shape)).astype(np.float32)  # ratios on both sides of clip
    ref = (logp + rng.normal(0, 0.5, shape)).astype(np.float32)
    adv = np.repeat(rng.normal(0, 1, (3, 1)), 11, 1).astype(np.float32)
    mask = (rng.uniform(size=shape) < 0.7).astype(np.float32)

    def ours(lp):
        total, count, _ = token_loss(lp, old, ref, adv, mask, eps_low=0.2, eps_high=eps_high,
                                     kl_coef=beta)  # fmt: skip
        return total / count

    loss, grad = jax.value_and_grad(ours)(jnp.asarray(logp))
    t_logp = torch.tensor(logp, requires_grad=True)
    t_loss = torch_grpo_loss(t_logp, *(torch.tensor(a) for a in (old, ref, adv, mask)), 0.2,
                             eps_high, beta)  # fmt: skip
    t_loss.backward()
    assert float(loss) == pytest.approx(float(t_loss.detach()), rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), t_logp.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(grad)[mask == 0]).max() == 0.0  # padding gets no gradient
