"""One GRPO step (sampling on the trainer's sharded arrays, rewards, reference forward, two
clipped updates with a k3 KL) on 8 fake CPU devices equals the same step on one device
(a subprocess: XLA_FLAGS must precede jax's import)."""

from __future__ import annotations

import sys

from tests.fake_devices import run_module


def child() -> int:
    import jax
    import numpy as np

    from qwen25vl_jax.sharding import make_mesh
    from tests.test_grpo_run import make_runner, prompts

    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    out = {}
    for name, mesh in (
        ("one", make_mesh(1, 1, 1, jax.devices()[:1])),
        ("eight", make_mesh(2, 2, 2)),
    ):
        # Adam with eps 1 moves each weight by ~lr x its gradient: with the usual 1e-8, a
        # weight whose gradient is float32 noise would move by +-lr on either mesh
        runner, state = make_runner(mesh, kl_coef=0.05, num_updates=2, lr=1.0, eps=1.0)
        state, metrics, texts = runner.step(state, prompts(runner.cfg), jax.random.key(7))
        split = sum(not a.sharding.is_fully_replicated for a in state.trainable.values())
        out[name] = (jax.device_get(state.trainable), metrics, texts, split)
    (p1, m1, t1, _), (p8, m8, t8, split) = out["one"], out["eight"]
    assert t1 == t8, "the two meshes sampled different completions"
    worst = max(float(np.linalg.norm(p8[k] - v) / np.linalg.norm(v)) for k, v in p1.items())
    keys = ("loss", "kl", "clip_fraction", "reward", "grad_norm")
    diffs = {k: abs(m1[k] - m8[k]) / max(abs(m1[k]), 1e-6) for k in keys}
    kl, clipped = m1["kl"], m1["clip_fraction"]
    print(f"{split} trainable arrays sharded; worst relative parameter difference {worst:.2e}; "
          f"metrics {diffs}; kl {kl:.3e}; clip_fraction {clipped:.3f}")  # fmt: skip
    ok = worst <= 1e-5 and max(diffs.values()) <= 1e-4 and split >= 10
    return 0 if ok and kl > 0 and clipped > 0 else 1  # the KL and the clip were exercised


def test_grpo_step_on_8_devices_equals_1():
    out = run_module("tests.test_grpo_sharded")
    assert "worst relative parameter difference" in out
    print(out)


if __name__ == "__main__":
    sys.exit(child())
