"""No [L, L] array in the traced training loss for the kernel backends (DESIGN §5).

The training loss and its gradient (the tiny model: packed text of L = 4,096 tokens and 4,096
ViT slots) are traced with `jax.make_jaxpr` on abstract shapes: nothing runs. Every
intermediate of every nested jaxpr (layer scans, custom-VJP rules, Pallas kernel bodies) is
checked for two axes >= L. The `xla` backend builds its [B, K, G, T, S] logits, so the same
check finds them there: the test can fail.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.inputs import Batch
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.param_paths import flatten
from qwen25vl_jax.train.step import NextTokenLoss, objective_sums

L = 4096


def _abstract_batch(cfg: ModelConfig, length: int, slots: int) -> Batch:
    i32 = jnp.int32
    shapes = {
        "tokens": ((1, length), i32),
        "segment_ids": ((1, length), i32),
        "positions": ((3, 1, length), i32),
        "vision_index": ((1, length), i32),
        "patches": ((1, slots, cfg.vision.patch_dim), jnp.float32),
        "vit_positions": ((1, slots, 2), i32),
        "vit_segment_ids": ((1, slots), i32),
        "targets": ((1, length), i32),
        "loss_mask": ((1, length), jnp.float32),
    }
    fields = [f.name for f in dataclasses.fields(Batch)]
    return Batch(**{name: jax.ShapeDtypeStruct(*shapes[name]) for name in fields})


def _sub_jaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def quadratic_intermediates(jaxpr, length: int) -> list[tuple[str, tuple]]:
    """(primitive, shape) of every value in `jaxpr` or its sub-jaxprs with two axes >= length."""
    found = []
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = tuple(getattr(var.aval, "shape", ()))
            if sum(d >= length for d in shape) >= 2:
                found.append((eqn.primitive.name, shape))
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                found += quadratic_intermediates(sub, length)
    return found


def _trace_training_loss(backend: str):
    cfg = ModelConfig.tiny()
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    params = flatten(nnx.to_pure_dict(state))  # the trainer's flat {path: array}
    loss = functools.partial(
        objective_sums,
        graphdef=graphdef,
        objective=NextTokenLoss(chunk=512),
        opts=RunOptions(dtype=jnp.bfloat16, backend=backend, remat="dots"),
    )
    grad = jax.grad(lambda p, b: loss(p, {}, b)[0])
    return jax.make_jaxpr(grad)(params, _abstract_batch(cfg, L, L)).jaxpr


@pytest.mark.parametrize("backend", ["pallas_gpu", "splash"])
def test_kernel_backends_hold_no_length_squared_array(backend):
    assert quadratic_intermediates(_trace_training_loss(backend), L) == []


def test_the_check_finds_the_xla_logits():
    found = quadratic_intermediates(_trace_training_loss("xla"), L)
    assert any(shape[-2:] == (L, L) for _, shape in found), found
