"""The batch schema: `ModelInputs` (the fixed-shape arrays the compiled model consumes) and
`Batch` (plus the training targets), each field declaring its logical axes once;
`PreferenceBatch` (plus the pairs of a preference loss).

Everything that depends on a field's axes is derived from that declaration: shardings
(`field_shardings`), placement on a mesh (`place`), and micro-batching (`split_batch`); the batch
axis of a field is where its axes name "batch" (axis 1 for `positions`). The host builds both
classes in one function, `qwen25vl_jax.data.assemble.assemble`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from qwen25vl_jax.sharding import logical_to_spec

T = TypeVar("T")


def _axes(*names: str | None) -> Any:
    """A field declared with its logical axis names (the sharding rules' names)."""
    return dataclasses.field(metadata={"axes": names})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """One batch, every shape static.

    tokens: int32[B, L]. segment_ids: int32[B, L], 0 = padding, packed samples 1, 2, ...
    positions: int32[3, B, L] MRoPE (temporal, height, width). vision_index: int32[B, L], the
    merged vision-token slot feeding each position (-1 = text). patches: float32[B, N, 1176] in
    window layout (N = windows x window_patches; N = 0 when the batch has no media).
    vit_positions: int32[B, N, 2]. vit_segment_ids: int32[B, N], 0 = padding slot.
    """

    tokens: np.ndarray = _axes("batch", "length")
    segment_ids: np.ndarray = _axes("batch", "length")
    positions: np.ndarray = _axes(None, "batch", "length")
    vision_index: np.ndarray = _axes("batch", "length")
    patches: np.ndarray = _axes("batch", "vit_length", None)
    vit_positions: np.ndarray = _axes("batch", "vit_length", None)
    vit_segment_ids: np.ndarray = _axes("batch", "vit_length")

    @property
    def inputs(self) -> ModelInputs:
        """The model's fields only (a `Batch` without its targets; a `ModelInputs` itself)."""
        return _build(ModelInputs, lambda f: getattr(self, f.name))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch(ModelInputs):
    """`ModelInputs` plus the training targets.

    targets: int32[B, L], the next token of the same sample (0 where there is none).
    loss_mask: float32[B, L], 1 where `targets` is supervised (an assistant token of the same
    sample), 0 elsewhere.
    """

    targets: np.ndarray = _axes("batch", "length")
    loss_mask: np.ndarray = _axes("batch", "length")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PreferenceBatch(Batch):
    """`Batch` plus what a preference loss (DPO) reads; P = pairs per row, fixed by config.

    pair_segments: int32[B, P, 2], the segment ids in its row of pair p's chosen ([..., 0]) and
    rejected ([..., 1]) sample; 0 = no pair (pair p is valid where pair_segments[..., 0] > 0).
    ref_logps: float32[B, P, 2], the reference model's log-probs of the chosen / rejected
    replies, summed over their supervised tokens (0 until a reference fills them in).
    """

    pair_segments: np.ndarray = _axes("batch", None, None)
    ref_logps: np.ndarray = _axes("batch", None, None)


def _build(cls: type[T], value: Callable[[dataclasses.Field], Any]) -> T:
    """An instance of schema class `cls` whose field f holds value(f)."""
    return cls(**{f.name: value(f) for f in dataclasses.fields(cls)})


def logical_axes(schema: type | ModelInputs) -> dict[str, tuple[str | None, ...]]:
    """{field: its logical axis names} of a schema class or instance."""
    return {f.name: f.metadata["axes"] for f in dataclasses.fields(schema)}


def batch_axis(field: dataclasses.Field) -> int:
    """The axis of `field` that indexes rows of the batch."""
    return field.metadata["axes"].index("batch")


def map_fields(fn: Callable[[Any, dataclasses.Field], Any], x: T) -> T:
    """The same schema class with each field's array a replaced by fn(a, field)."""
    return _build(type(x), lambda f: fn(getattr(x, f.name), f))


def field_shardings(x: type[T] | T, mesh: Mesh) -> T:
    """Each field's `NamedSharding` on `mesh`, from its logical axes. Given an instance, a mesh
    axis that does not divide a dimension is dropped for it (`logical_to_spec`)."""
    if isinstance(x, type):
        return _build(
            x, lambda f: NamedSharding(mesh, logical_to_spec(f.metadata["axes"], None, mesh))
        )
    return map_fields(
        lambda a, f: NamedSharding(mesh, logical_to_spec(f.metadata["axes"], np.shape(a), mesh)),
        x,
    )


def place(x: T, mesh: Mesh | None) -> T:
    """`x`'s arrays put on `mesh` by their logical axes (unchanged when mesh is None)."""
    return x if mesh is None else jax.device_put(x, field_shardings(x, mesh))


def split_batch(x: T, k: int) -> T:
    """Each field's batch axis B split into [k, B / k], the k axis moved to the front (for a
    `lax.scan` over micro-batches): positions [3, B, L] -> [k, 3, B / k, L]."""

    def split(a, f):
        ax = batch_axis(f)
        a = a.reshape(*a.shape[:ax], k, a.shape[ax] // k, *a.shape[ax + 1 :])
        return jnp.moveaxis(a, ax, 0)

    return map_fields(split, x)
