"""DPO's reference model: the frozen initial weights, as log-probs of each pair's replies in
`PreferenceBatch.ref_logps`. Two ways, selected by `DPOConfig.reference`:

* "weights" (`WeightsReference`): a second parameter tree, sharded like the trained weights,
  and one jitted forward that fills `ref_logps` of the global batch on the mesh before each
  step. Costs a copy of the weights and one forward per step.
* "precomputed" (`PrecomputedReference`): a first pass over the run's batches (the data
  iterator is deterministic: batch s of a fresh iterator is the batch of step s) scores every
  step's pairs with the initial weights and writes float32[steps, B_local, P, 2] per process to
  `<workdir>/dpo_reference/process_<i>.npy`; training fills `ref_logps` from it on the host.
  No reference weights stay in memory; a resumed run reads the file.

Both run the same `dpo.sequence_logps` as the policy, so at step 0 (policy = reference) every
pair's implicit reward is 0 and the sigmoid loss is log 2.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from qwen25vl_jax.atomic_write import atomic_path
from qwen25vl_jax.model.inputs import PreferenceBatch
from qwen25vl_jax.param_paths import unflatten
from qwen25vl_jax.train.dpo import sequence_logps
from qwen25vl_jax.train.trainer import Trainer


def reference_forward(trainer: Trainer, chunk: int) -> Callable:
    """jit((flat params, global PreferenceBatch) -> float32[B, P, 2] reply log-probs), with the
    trainer's parameter and batch shardings; compiled once per bucket."""
    batch_sh = trainer.batch_shardings()

    def forward(params, batch):
        model = nnx.merge(trainer.graphdef, unflatten(params))
        return sequence_logps(model, batch, trainer.opts, chunk=chunk)

    return jax.jit(
        forward,
        in_shardings=(trainer.param_shardings, batch_sh),
        out_shardings=batch_sh.ref_logps,
    )


class WeightsReference:
    """The frozen initial weights on the mesh. `prepare(global batch)` -> the batch with its
    `ref_logps` filled (pass it as `Trainer.step`'s `prepare`); `fill` is the identity."""

    def __init__(self, trainer: Trainer, params: dict[str, jax.Array], chunk: int = 1024):
        # a copy, not the arrays of the train state: the step donates (overwrites) those
        copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=trainer.param_shardings)
        self.params = copy(params)
        self._forward = reference_forward(trainer, chunk)

    def fill(self, step: int, local: PreferenceBatch) -> PreferenceBatch:
        return local

    def prepare(self, batch: PreferenceBatch) -> PreferenceBatch:
        return dataclasses.replace(batch, ref_logps=self._forward(self.params, batch))


class PrecomputedReference:
    """Reference log-probs of every step's local rows, float32[steps, B_local, P, 2]; `fill`
    puts step s's into the host batch, `prepare` is None (nothing runs on the mesh)."""

    prepare = None

    def __init__(self, table: np.ndarray):
        self.table = table

    def fill(self, step: int, local: PreferenceBatch) -> PreferenceBatch:
        return dataclasses.replace(local, ref_logps=self.table[step])


def table_path(workdir: str) -> str:
    return os.path.join(workdir, "dpo_reference", f"process_{jax.process_index()}.npy")


def precompute(
    trainer: Trainer,
    params: dict[str, jax.Array],
    batches: Iterator[PreferenceBatch],
    steps: int,
    workdir: str,
    chunk: int = 1024,
) -> PrecomputedReference:
    """The table of `steps` batches of a fresh iterator `batches` under `params` (the initial
    weights), read from `table_path(workdir)` when a previous run wrote one that long, else
    computed and written atomically (a killed pass leaves no partial table)."""
    path = table_path(workdir)
    if os.path.exists(path):
        table = np.load(path, allow_pickle=False)
        if len(table) >= steps:
            return PrecomputedReference(table)
    forward = reference_forward(trainer, chunk)
    spec = trainer.batch_shardings().ref_logps.spec
    rows = []
    for s in range(steps):
        try:
            local = next(batches)
        except StopIteration:
            raise ValueError(f"the data ran out at step {s} of {steps}") from None
        with jax.set_mesh(trainer.mesh):  # as `Trainer.step`: the model reads the mesh
            ref = forward(params, trainer.global_batch(local))
        rows.append(
            np.asarray(multihost_utils.global_array_to_host_local_array(ref, trainer.mesh, spec))
        )
    table = np.stack(rows).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, table, allow_pickle=False)
    return PrecomputedReference(table)
