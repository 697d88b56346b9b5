"""Saving and restoring a Grain iterator's state with Orbax (one JSON file per JAX process)."""

from __future__ import annotations

import os

import grain


def save_iterator_state(directory: str | os.PathLike, iterator: grain.DatasetIterator) -> None:
    """Saves the iterator state with Orbax into ``directory`` (must not exist): one JSON file
    per JAX process, via Grain's Orbax handler."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckptr:
        ckptr.save(os.path.abspath(directory), args=grain.checkpoint.CheckpointSave(iterator))


def restore_iterator_state(
    directory: str | os.PathLike, iterator: grain.DatasetIterator
) -> grain.DatasetIterator:
    """Restores a state saved by `save_iterator_state` into ``iterator`` (built with the same
    config) and returns it; it then yields what the saved one would have."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckptr:
        return ckptr.restore(
            os.path.abspath(directory), args=grain.checkpoint.CheckpointRestore(iterator)
        )
