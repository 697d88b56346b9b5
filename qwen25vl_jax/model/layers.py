"""Parameter declaration and the parameter-free maths shared by the ViT and the decoder."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param(
    rngs: nnx.Rngs,
    shape: Sequence[int],
    names: Sequence[str | None],
    *,
    dtype: jnp.dtype,
    init: str = "normal",
    std: float = 0.02,
) -> nnx.Param:
    """A parameter carrying logical axis names (`out_sharding`), created unsharded.

    init: "normal" (std `std`, as transformers' `initializer_range`), "zeros" or "ones".
    """
    if len(shape) != len(names):
        raise ValueError(f"shape {shape} and names {names} differ in rank")
    if init == "normal":
        value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value.astype(dtype), out_sharding=tuple(names), eager_sharding=False)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm as the reference: statistics in float32, scale applied in the input dtype.

    x: [..., D]; weight: [D].
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array, bias=None) -> jax.Array:
    """down(silu(x @ gate) * (x @ up)); bias = (b_gate, b_up, b_down) or None.

    x: [..., D]; gate, up: [D, I]; down: [I, D].
    """
    g = jnp.einsum("...d,di->...i", x, gate)
    u = jnp.einsum("...d,di->...i", x, up)
    if bias is not None:
        g, u = g + bias[0], u + bias[1]
    y = jnp.einsum("...i,id->...d", jax.nn.silu(g) * u, down)
    return y if bias is None else y + bias[2]


def cast(tree, dtype):
    """Casts floating arrays of a pytree to the compute dtype."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def project(x: jax.Array, kernel: jax.Array, in_axes: int = 1) -> jax.Array:
    """x [..., *kernel.shape[:in_axes]] @ kernel -> [..., *kernel.shape[in_axes:]] as one 2-D
    matmul (named multi-axis einsums make XLA CPU copy a transposed kernel on every call)."""
    k_in, k_out = kernel.shape[:in_axes], kernel.shape[in_axes:]
    lead = x.shape[: x.ndim - in_axes]
    flat_in = int(np.prod(k_in))
    y = x.reshape(*lead, flat_in) @ kernel.reshape(flat_in, -1)
    return y.reshape(*lead, *k_out)
