"""GRPO on the tiny random model: the sampler's log-probs equal the trainer's recomputed ones,
nothing recompiles across RL steps, and a CI-sized run raises its mean reward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.rl_prompts import RLPrompt
from qwen25vl_jax.inference import generate as generate_lib
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train import rewards as R
from qwen25vl_jax.train.grpo import GRPOLoss
from qwen25vl_jax.train.optimizer import OptimConfig
from qwen25vl_jax.train.rollout import GRPORunner, RolloutConfig, rl_batch, text_only
from qwen25vl_jax.train.trainer import Trainer
from tests.cases import make_samples

LOW = 50  # the learnable reward: the share of completion tokens with an id below LOW


class IdsTokenizer:
    """Decodes ids as space-separated numbers (the tiny model has no real vocabulary)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def low_tokens(text: str, prompt) -> float:
    ids = text.split()
    return float(np.mean([int(i) < LOW for i in ids])) if ids else 0.0


if "test_low_tokens" not in R.REWARDS:
    R.register_reward("test_low_tokens")(low_tokens)


def make_runner(
    mesh, *, temperature=1.0, top_p=1.0, kl_coef=0.0, lr=3e-3, eps=1e-8, seed=1, **rollout
):
    cfg = ModelConfig.tiny()
    trainer = Trainer(
        cfg,
        OptimConfig(lr=lr, eps=eps, warmup_steps=0, total_steps=1000),
        RunOptions(dtype=jnp.float32),
        mesh,
        objective=GRPOLoss(temperature=temperature, kl_coef=kl_coef),
    )
    state = trainer.init_state(seed=seed)
    reference = jax.tree.map(jnp.copy, state.params) if kl_coef else None
    ro = RolloutConfig(
        **{"group_size": 8, "max_new_tokens": 8, "prompt_len": 32, "seq_len": 48,
           "num_slots": 16, "rewards": {"test_low_tokens": 1.0}, **rollout},
        temperature=temperature, top_p=top_p,
    )  # fmt: skip
    return GRPORunner(trainer, IdsTokenizer(), ro, reference=reference), state


def prompts(cfg, seed=0):
    """Four prompts: text-only ones and one with an image (vision path, MRoPE positions)."""
    rows = [[5], [3, ("image", (1, 4, 4)), 4], [7], [6]]
    return [RLPrompt(f"p{i}", "x", s, {}) for i, s in enumerate(make_samples(cfg, rows, seed))]


def test_sampler_logprobs_equal_trainer_recomputed():
    """At temperature 0.7 with top-p 0.9: both sides are under logits / 0.7, before top-p (the
    learning run below samples at temperature 1)."""
    runner, state = make_runner(make_mesh(1, 1, 1, jax.devices()[:1]), temperature=0.7, top_p=0.9)
    ps = prompts(runner.cfg)
    comps, lps, _ = runner._sample(state, ps, jax.random.key(3))
    rows = [p for p in ps for _ in range(8)]
    ok = text_only(runner.cfg, comps)
    batch = rl_batch(runner.cfg, rows, comps, lps, np.zeros(len(rows)), seq_len=48,
                     num_slots=16, keep=ok)  # fmt: skip
    with jax.set_mesh(runner.trainer.mesh):
        glob = runner.trainer.global_batch(batch)
        recomputed = np.asarray(runner._ref_fn(state.params, glob))
    on = batch.loss_mask > 0
    assert on.sum() >= 0.8 * 8 * len(rows)  # most rows replayed, most completions 8 tokens
    assert len({tuple(c) for c in comps}) > len(rows) // 2  # really sampled, not one answer
    diff = np.abs(recomputed[on] - batch.old_logprobs[on]).max()
    assert diff <= 1e-4, diff
    assert np.abs(batch.old_logprobs[on]).min() > 0  # each position holds a real log-prob


def test_run_raises_mean_reward_and_compiles_once():
    """15 GRPO steps (4 prompts x 8 completions of 8 tokens, KL to the initial weights) move
    the share of low-id tokens from chance (~0.24) up; sampling and the step compile once."""
    runner, state = make_runner(make_mesh(1, 1, 1, jax.devices()[:1]), kl_coef=0.01, lr=1e-2)
    ps = prompts(runner.cfg)
    rewards, kls = [], []
    for i in range(15):
        state, m, _ = runner.step(state, ps, jax.random.key(100 + i))
        rewards.append(m["reward"])
        kls.append(m["kl"])
        if i == 0:
            sizes = (generate_lib.prefill_fn._cache_size(),
                     generate_lib.decode_loop_fn._cache_size(),
                     runner.trainer._step._cache_size())  # fmt: skip
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    print(f"mean reward {first:.3f} -> {last:.3f}; kl {kls[0]:.2e} -> {kls[-1]:.2e}")
    assert last >= first + 0.15, rewards
    assert kls[-1] > kls[0]  # the policy left the reference, and the KL metric sees it
    assert sizes == (generate_lib.prefill_fn._cache_size(),
                     generate_lib.decode_loop_fn._cache_size(),
                     runner.trainer._step._cache_size())  # fmt: skip
    assert {k for k in m} >= {"reward_test_low_tokens", "clip_fraction", "response_length",
                              "sample_seconds", "train_seconds", "loss"}  # fmt: skip
