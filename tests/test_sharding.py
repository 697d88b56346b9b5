"""The whole model on 8 fake CPU devices (a subprocess: XLA_FLAGS must precede jax's import)
gives the single-device logits, on an fsdp x tensor mesh and on a data x fsdp x tensor mesh, and
the training step's gradients, leaf by leaf."""

from __future__ import annotations

import sys
import types

import pytest
from jax.sharding import PartitionSpec as P

from qwen25vl_jax.sharding import logical_to_spec
from tests.fake_devices import run_module


@pytest.mark.parametrize("mesh", [(1, 4, 2), (2, 2, 2)], ids=["fsdp4xtensor2", "data2fsdp2tensor2"])
def test_sharded_logits_equal_single_device(tiny, mesh):
    out = run_module("tests.sharded_forward", str(tiny.path), *map(str, mesh))
    assert "max |dlogits|" in out


def test_rules_map_names_and_drop_axes_that_do_not_divide():
    mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 2})
    assert logical_to_spec(("embed", "mlp"), (48, 70), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("vit_heads", "head_dim"), (3, 12), mesh) == P(None, None)
    assert logical_to_spec(("batch", "length"), (4, 9), mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec(("batch", "length"), (2, 9), mesh) == P("data", None)
    # a mesh axis is never used twice in one spec
    assert logical_to_spec(("embed", "vit_embed"), (8, 8), mesh) == P("fsdp", None)


# ---- the training step's gradients on 8 devices (a subprocess, as above) ----------------------
def gradients_child() -> int:
    """Every gradient leaf of the trainer's step on a (data 2, fsdp 2, tensor 2) mesh against
    the same step on one device."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from qwen25vl_jax.config import ModelConfig
    from qwen25vl_jax.data.packing import Bucket
    from qwen25vl_jax.model.options import RunOptions
    from qwen25vl_jax.sharding import make_mesh
    from qwen25vl_jax.train import step as step_lib
    from qwen25vl_jax.train.optimizer import OptimConfig
    from qwen25vl_jax.train.synthetic import SyntheticBatches
    from qwen25vl_jax.train.trainer import Trainer
    from tests.test_train_behaviour import capture_gradients

    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    cfg = ModelConfig.tiny()
    batch = next(SyntheticBatches(cfg, Bucket(96, 16 * 48), batch_size=4, seed=3))
    grads, split = {}, 0
    for name, mesh in (
        ("one", make_mesh(1, 1, 1, jax.devices()[:1])),
        ("eight", make_mesh(2, 2, 2)),
    ):
        t = Trainer(cfg, OptimConfig(), RunOptions(dtype=jnp.float32), mesh)
        capture = capture_gradients()
        state = t.init_state(seed=2)
        state = state.__class__(state.step, state.trainable, state.frozen,
                                capture.init(state.trainable), state.rng)  # fmt: skip
        step = jax.jit(functools.partial(step_lib.train_step, graphdef=t.graphdef,
                                         optimizer=capture, opts=t.opts))  # fmt: skip
        out, _ = step(state, t.global_batch(batch))
        split += sum(not a.sharding.is_fully_replicated for a in out.opt_state.values())
        grads[name] = jax.device_get(out.opt_state)
    worst = max(
        float(np.linalg.norm(grads["eight"][k] - g) / np.linalg.norm(g))
        for k, g in grads["one"].items()
    )
    print(f"{split} gradient arrays sharded; worst relative gradient difference {worst:.2e}")
    return 0 if worst <= 1e-5 and split >= 20 else 1


def test_sharded_gradients_equal_single_device():
    out = run_module("tests.test_sharding")
    assert "worst relative gradient difference" in out
    print(out)


if __name__ == "__main__":
    sys.exit(gradients_child())
