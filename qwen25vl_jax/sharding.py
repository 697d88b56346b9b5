"""Mesh construction and the one logical-axis rules table.

Parameters and activations are annotated with *logical* axis names (`embed`, `mlp`, `heads` ...);
`RULES` maps each to mesh axes (`data`, `fsdp`, `tensor`). A dimension that a mesh axis does not
divide falls back to replicated on that axis (tiny test models, the 3-head ViT of a test config),
so one rules table serves every model size and mesh shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes it is split over (in order), as MaxText's logical_axis_rules.
RULES: dict[str, tuple[str, ...]] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_vocab": ("tensor",),
    # decoder parameters
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "layers": (),
    # vision parameters
    "vit_embed": ("fsdp",),
    "vit_mlp": ("tensor",),
    "vit_heads": ("tensor",),
    "merger_mlp": ("tensor",),
    "patch": (),
}


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh; `-1` on `data` takes the devices left over."""
    devices = list(devices if devices is not None else jax.devices())
    if data == -1:
        if len(devices) % (fsdp * tensor):
            raise ValueError(
                f"{len(devices)} devices do not split into fsdp={fsdp} x tensor={tensor}"
            )
        data = len(devices) // (fsdp * tensor)
    if data * fsdp * tensor != len(devices):
        raise ValueError(f"mesh {data}x{fsdp}x{tensor} != {len(devices)} devices")
    arr = np.asarray(devices, dtype=object).reshape(data, fsdp, tensor)
    return Mesh(arr, MESH_AXES)


def logical_to_spec(
    names: Sequence[str | None] | None, shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Maps logical names to a PartitionSpec; drops mesh axes that do not divide the dimension.

    A mesh axis already used by an earlier dimension is not used twice.
    """
    if names is None:
        return PartitionSpec()
    sizes = dict(mesh.shape) if mesh is not None else {}
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        axes = []
        dim = None if shape is None else shape[i]
        for ax in RULES.get(name, ()) if name else ():
            n = sizes.get(ax, 1)
            if ax in used or n == 1:
                continue
            if dim is not None and dim % (n * int(np.prod([sizes[a] for a in axes] or [1]))):
                continue
            axes.append(ax)
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh) -> nnx.State:
    """NamedShardings for every variable of an `nnx.State`, from its `out_sharding` names."""

    def one(v):
        names = v.get_metadata().get("out_sharding") if isinstance(v, nnx.Variable) else None
        shape = getattr(v, "shape", None)
        return NamedSharding(mesh, logical_to_spec(names, shape, mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names under the ambient mesh; a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))
