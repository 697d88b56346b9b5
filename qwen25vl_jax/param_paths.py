"""Parameter paths, spelled one way: the keys of the nested parameter dict
(`nnx.to_pure_dict(nnx.state(model))`) joined by "/", e.g. "visual/blocks/qkv_kernel".

The weight table, the trainer's flat state, the optimizer's module groups and the checkpoint
code all name parameters this way; only Orbax's storage names its arrays with "." (inside
`checkpoint.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SEP = "/"


def join(keys: Iterable[Any]) -> str:
    """('decoder', 'layers', 'q_kernel') -> 'decoder/layers/q_kernel'."""
    return SEP.join(str(k) for k in keys)


def split(path: str) -> tuple[str, ...]:
    """'decoder/layers/q_kernel' -> ('decoder', 'layers', 'q_kernel')."""
    return tuple(path.split(SEP))


def keypath_name(keypath: Iterable[Any]) -> str:
    """The path of a `jax.tree_util` key path (dict keys, attribute names, sequence indices)."""
    parts = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in keypath)
    return join(parts)


def flatten(nested: Mapping) -> dict[str, Any]:
    """{path: leaf} of a nested dict (the pure parameter dict)."""
    out: dict[str, Any] = {}
    for k, v in nested.items():
        if isinstance(v, Mapping):
            out.update({f"{k}{SEP}{p}": leaf for p, leaf in flatten(v).items()})
        else:
            out[str(k)] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """The nested dict of {path: leaf}; inverse of `flatten`."""
    out: dict = {}
    for path, leaf in flat.items():
        *parents, last = split(path)
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = leaf
    return out
