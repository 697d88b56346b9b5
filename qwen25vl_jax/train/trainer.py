"""The trainer: mesh, sharded state, the compiled step, Orbax checkpoints with exact resume.

Everything that has a shape is laid out by the one logical rules table (`sharding.py`): master
weights and optimizer moments of each parameter follow its logical names; batches split their
batch axis over (data, fsdp). One `jax.jit` with explicit in/out shardings and the state
donated; it compiles once per bucket shape.

Checkpoints (Orbax `CheckpointManager`, async): per step directory the items `params` (the
full parameter tree, the layout `qwen25vl_jax.checkpoint` and `orbax_to_hf` read), `opt_state`,
`train` (step, PRNG key, data-iterator state: JSON) and `config` (the model's config.json).
Orbax writes each step into a temporary directory and renames it when complete, so a step that
was being written when the process died is never the one restored.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from qwen25vl_jax.checkpoint import param_save_args
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.batch import Batch
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.sharding import logical_to_spec
from qwen25vl_jax.train import step as step_lib
from qwen25vl_jax.train.optimizer import (
    OptimConfig,
    flatten,
    make_optimizer,
    schedule,
    split_trainable,
    unflatten,
)

BATCH_NAMES = {  # logical names of each Batch field
    "tokens": ("batch", "length"), "segment_ids": ("batch", "length"),
    "positions": (None, "batch", "length"), "vision_index": ("batch", "length"),
    "patches": ("batch", None, None), "vit_positions": ("batch", None, None),
    "vit_segment_ids": ("batch", None), "targets": ("batch", "length"),
    "loss_mask": ("batch", "length"),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How each step runs."""

    dtype: str = "bfloat16"  # compute dtype; master weights stay float32
    remat: str = "none"
    backend: str = "xla"
    accum_steps: int = 1
    loss_chunk: int = 1024
    unroll: bool = False  # unroll layer scans (exact XLA cost analysis)

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(dtype=jnp.dtype(self.dtype), backend=self.backend, remat=self.remat,
                          unroll=self.unroll)  # fmt: skip


def param_names(model_cfg: ModelConfig) -> dict[str, tuple]:
    """{flat path: logical axis names} of every parameter, from the model's declarations."""
    abstract = nnx.eval_shape(lambda: Qwen25VL(model_cfg, rngs=nnx.Rngs(0)))
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract)):
        out["/".join(map(str, path))] = var.get_metadata().get("out_sharding")
    return out


def init_params(model_cfg: ModelConfig, seed: int, shardings: dict) -> dict[str, jax.Array]:
    """Random float32 parameters created directly in their shards (one jit, no host copy)."""

    def make():
        model = Qwen25VL(model_cfg, rngs=nnx.Rngs(seed))
        return flatten(nnx.to_pure_dict(nnx.state(model)))

    return jax.jit(make, out_shardings=shardings)()


class Trainer:
    """Owns the mesh, the shardings, the compiled step and the checkpoint manager."""

    def __init__(self, model_cfg: ModelConfig, optim: OptimConfig, step_cfg: StepConfig,
                 mesh: jax.sharding.Mesh, workdir: str | None = None, *, save_every: int = 100,
                 keep: int = 3, async_save: bool = True):  # fmt: skip
        self.model_cfg, self.optim, self.step_cfg, self.mesh = model_cfg, optim, step_cfg, mesh
        self.replicated = NamedSharding(mesh, PartitionSpec())
        names = param_names(model_cfg)
        shapes = {k: v.shape for k, v in flatten(nnx.to_pure_dict(nnx.state(
            nnx.eval_shape(lambda: Qwen25VL(model_cfg, rngs=nnx.Rngs(0)))))).items()}  # fmt: skip
        self.param_shardings = {
            k: NamedSharding(mesh, logical_to_spec(names[k], shapes[k], mesh)) for k in names
        }
        abstract = {k: jax.ShapeDtypeStruct(shapes[k], jnp.float32) for k in shapes}
        trainable, frozen = split_trainable(abstract, optim)
        self.optimizer = make_optimizer(optim, trainable)
        abs_opt = jax.eval_shape(self.optimizer.init, trainable)
        opt_sh = jax.tree_util.tree_map_with_path(
            lambda kp, leaf: self._moment_sharding(kp, leaf, shapes), abs_opt
        )
        self._abstract = (abstract, abs_opt)
        self.state_shardings = step_lib.TrainState(
            step=self.replicated,
            trainable={k: self.param_shardings[k] for k in trainable},
            frozen={k: self.param_shardings[k] for k in frozen},
            opt_state=opt_sh,
            rng=self.replicated,
        )
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen25VL(model_cfg, rngs=nnx.Rngs(0))))
        lr_group = "llm" if optim.train_llm else ("merger" if optim.train_merger else "vit")
        step_fn = functools.partial(
            step_lib.train_step, graphdef=self.graphdef, optimizer=self.optimizer,
            opts=step_cfg.run_options, accum_steps=step_cfg.accum_steps,
            loss_chunk=step_cfg.loss_chunk, lr_fn=schedule(optim, optim.group_lr(lr_group)),
        )  # fmt: skip
        self._step = jax.jit(
            step_fn, in_shardings=(self.state_shardings, self.batch_shardings()),
            out_shardings=(self.state_shardings, self.replicated), donate_argnums=0,
        )  # fmt: skip
        self.manager = None
        if workdir is not None:
            options = ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, max_to_keep=keep,
                enable_async_checkpointing=async_save, create=True,
            )  # fmt: skip
            self.manager = ocp.CheckpointManager(os.path.abspath(workdir), options=options)

    def _moment_sharding(self, keypath, leaf, shapes) -> NamedSharding:
        """An optimizer-state leaf stored under a parameter's path (Adam moments) is sharded as
        that parameter; counts and other scalars are replicated."""
        for k in reversed(keypath):
            name = getattr(k, "key", None)
            if isinstance(name, str) and shapes.get(name) == leaf.shape:
                return self.param_shardings[name]
        return self.replicated

    # ---- state ------------------------------------------------------------------------------
    def batch_shardings(self) -> Batch:
        return Batch(**{k: NamedSharding(self.mesh, logical_to_spec(n, None, self.mesh))
                        for k, n in BATCH_NAMES.items()})  # fmt: skip

    def init_state(self, params: dict | None = None, seed: int = 0) -> step_lib.TrainState:
        """A fresh state from `params` (flat or nested, any placement) or random weights."""
        if params is None:
            flat = init_params(self.model_cfg, seed, self.param_shardings)
        else:
            flat = (
                params if all(isinstance(k, str) and "/" in k for k in params) else flatten(params)
            )
            flat = {k: jax.device_put(jnp.asarray(v, jnp.float32), self.param_shardings[k])
                    for k, v in flat.items()}  # fmt: skip
        trainable, frozen = split_trainable(flat, self.optim)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(
            trainable
        )
        rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), self.replicated)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
        return step_lib.TrainState(step, trainable, frozen, opt_state, rng)

    def global_batch(self, local: Batch) -> Batch:
        """Assembles the global batch from each process's rows (host NumPy)."""
        vocab = self.model_cfg.text.vocab_size
        if np.max(local.tokens, initial=0) >= vocab or np.max(local.targets, initial=0) >= vocab:
            # an embedding gather would silently clamp: a tokenizer / config mismatch
            raise ValueError(f"batch holds token ids >= the model's vocab_size {vocab}: does the "
                             "tokenizer match the model config?")  # fmt: skip
        sh = self.batch_shardings()
        return Batch(**{
            f.name: jax.make_array_from_process_local_data(getattr(sh, f.name),
                                                           np.asarray(getattr(local, f.name)))
            for f in dataclasses.fields(Batch)
        })  # fmt: skip

    def step(self, state: step_lib.TrainState, local: Batch):
        return self._step(state, self.global_batch(local))

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, state: step_lib.TrainState, data_state: dict | None, *, force=False) -> bool:
        if self.manager is None:
            return False
        step = int(state.step)
        if step in self.manager.all_steps():
            return False
        meta = {"step": step, "rng": np.asarray(state.rng).tolist(), "data": data_state}
        args = ocp.args.Composite(
            # one storage chunk per layer: exports (orbax_to_hf) stream layer by layer
            params=ocp.args.StandardSave(state.params, save_args=param_save_args(state.params)),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave(self.model_cfg.to_hf_dict()),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self) -> tuple[step_lib.TrainState, dict | None]:
        """The latest complete checkpoint, restored straight into the state's shardings."""
        step = self.manager.latest_step()
        with_sharding = lambda tree, sh: jax.tree.map(  # noqa: E731
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh
        )
        params, opt_state = self._abstract
        sh = self.state_shardings
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(
                unflatten(with_sharding(params, {**sh.trainable, **sh.frozen}))),
            opt_state=ocp.args.StandardRestore(with_sharding(opt_state, sh.opt_state)),
            train=ocp.args.JsonRestore(),
        ))  # fmt: skip
        flat = flatten(restored.params)
        trainable, frozen = split_trainable(flat, self.optim)
        meta = restored.train
        rng = jax.device_put(np.asarray(meta["rng"], np.uint32), self.replicated)
        state = step_lib.TrainState(
            jax.device_put(jnp.asarray(meta["step"], jnp.int32), self.replicated),
            trainable, frozen, restored.opt_state, rng,
        )  # fmt: skip
        return state, meta.get("data")

    def latest_step(self) -> int | None:
        return None if self.manager is None else self.manager.latest_step()

    def close(self):
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
