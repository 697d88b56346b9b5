"""Subprocess body for test_sharding: the whole model on 8 fake CPU devices vs one device.

Usage: python -m tests.sharded_forward HF_DIR DATA FSDP TENSOR (XLA_FLAGS set by the caller).
Prints the max |dlogits| and exits non-zero above 1e-5.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from qwen25vl_jax.data.hf_format import inputs_from_hf
from qwen25vl_jax.hf_weights import load_hf
from qwen25vl_jax.model.inputs import field_shardings
from qwen25vl_jax.model.qwen25vl import forward
from qwen25vl_jax.sharding import logical_to_spec, make_mesh, state_shardings
from tests.cases import make_case


def main(hf_dir: str, data: int, fsdp: int, tensor: int) -> int:
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    model, cfg = load_hf(hf_dir)
    rows = [[3, ("image", (1, 6, 10)), 9], [2, ("video", (2, 4, 6), 0.5), 3]] * 2
    arrays = make_case(cfg, rows, seed=1)
    inputs, _ = inputs_from_hf(cfg, arrays)
    graphdef, state = nnx.split(model)
    single = np.asarray(jax.jit(forward)(graphdef, state, inputs))

    mesh = make_mesh(data, fsdp, tensor)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    in_sh = field_shardings(inputs, mesh)
    inputs = jax.device_put(inputs, in_sh)
    n_sharded = sum(len(a.sharding.device_set) > 1 and not a.sharding.is_fully_replicated
                    for a in jax.tree.leaves(state))  # fmt: skip
    with jax.set_mesh(mesh):
        out_sh = NamedSharding(mesh, logical_to_spec(("batch", "length", "act_vocab"),
                                                     single.shape, mesh))  # fmt: skip
        logits = jax.jit(
            lambda s, i: forward(graphdef, s, i),
            in_shardings=(shardings, in_sh),
            out_shardings=out_sh,
        )(state, inputs)
    diff = float(np.abs(np.asarray(logits) - single).max())
    print(f"mesh data={data} fsdp={fsdp} tensor={tensor}: {n_sharded} sharded params, "
          f"max |dlogits| {diff:.2e}")  # fmt: skip
    return 0 if diff <= 1e-5 and n_sharded > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *map(int, sys.argv[2:5])))
