"""Mesh construction and the one logical-axis rules table.

Parameters and activations are annotated with *logical* axis names (`embed`, `mlp`, `heads` ...);
`RULES` maps each to mesh axes (`data`, `fsdp`, `context`, `tensor`). A dimension that a mesh
axis does not divide falls back to replicated on that axis (tiny test models, the 3-head ViT of a
test config), so one rules table serves every model size and mesh shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# `context` splits activations along the sequence (the decoder's tokens, the ViT's slots); it
# sits next to `tensor` so a context group is close in the device order (ring neighbours).
MESH_AXES = ("data", "fsdp", "context", "tensor")

# logical name -> mesh axes it is split over (in order), as MaxText's logical_axis_rules.
RULES: dict[str, tuple[str, ...]] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": ("context",),  # decoder tokens [B, L]: L split over `context`
    "vit_length": ("context",),  # ViT slots [B, N] (window layout): whole windows per shard
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_vocab": ("tensor",),
    # decoder parameters. Weights and Adam moments are split over `context` too (as MaxText's
    # rules do): a context group holds one row's activations, not one copy of the weights each,
    # so a long-context mesh keeps fsdp's memory per device (72B at 32k on 64 devices)
    "vocab": ("tensor",),
    "embed": ("fsdp", "context"),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "layers": (),
    # vision parameters
    "vit_embed": ("fsdp", "context"),
    "vit_mlp": ("tensor",),
    "vit_heads": ("tensor",),
    "merger_mlp": ("tensor",),
    "patch": (),
}


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
    *,
    context: int = 1,
) -> Mesh:
    """A (data, fsdp, context, tensor) mesh over all (or the given) devices; one axis may be -1,
    taking the devices the others leave. context: devices that split each sequence."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, context, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        if len(devices) % rest:
            raise ValueError(
                f"{len(devices)} devices do not split into {dict(zip(MESH_AXES, sizes))}"
            )
        sizes[sizes.index(-1)] = len(devices) // rest
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} != {len(devices)} devices")
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), MESH_AXES)


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


def context_size(mesh=None) -> int:
    """Devices along the `context` axis of `mesh` (default: the ambient abstract mesh); 1 when
    there is no mesh or no such axis."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty or "context" not in mesh.axis_names:
        return 1
    return int(dict(mesh.shape)["context"])
