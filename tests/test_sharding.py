"""The whole model on 8 fake CPU devices (a subprocess: XLA_FLAGS must precede jax's import)
gives the single-device logits, on an fsdp x tensor mesh and on a data x fsdp x tensor mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
from jax.sharding import PartitionSpec as P

from qwen25vl_jax.sharding import logical_to_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("mesh", [(1, 4, 2), (2, 2, 2)], ids=["fsdp4xtensor2", "data2fsdp2tensor2"])
def test_sharded_logits_equal_single_device(tiny, mesh):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")  # fmt: skip
    cmd = [sys.executable, "-m", "tests.sharded_forward", str(tiny.path), *map(str, mesh)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max |dlogits|" in proc.stdout


def test_rules_map_names_and_drop_axes_that_do_not_divide():
    mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 2})
    assert logical_to_spec(("embed", "mlp"), (48, 70), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("vit_heads", "head_dim"), (3, 12), mesh) == P(None, None)
    assert logical_to_spec(("batch", "length"), (4, 9), mesh) == P(("data", "fsdp"), None)
    assert logical_to_spec(("batch", "length"), (2, 9), mesh) == P("data", None)
    # a mesh axis is never used twice in one spec
    assert logical_to_spec(("embed", "vit_embed"), (8, 8), mesh) == P("fsdp", None)
