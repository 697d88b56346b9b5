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
from qwen25vl_jax.model.inputs import Batch, field_shardings
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.param_paths import flatten, unflatten
from qwen25vl_jax.sharding import state_shardings
from qwen25vl_jax.train import step as step_lib
from qwen25vl_jax.train.optimizer import OptimConfig, make_optimizer, schedule, split_trainable


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How a training step is formed (how the model runs is `RunOptions`).

    accum_steps: micro-batches per optimizer step (the batch's rows split evenly). loss_chunk:
    positions per chunk of the cross-entropy, so the [chunk, vocab] logits are the largest
    buffer of the loss. loss_average: "token" (every supervised token weighs the same),
    "sample" (every packed sample does) or "sqrt" (a sample of n tokens weighs sqrt(n)):
    `step.SampleMeanLoss`."""

    accum_steps: int = 1
    loss_chunk: int = 1024
    loss_average: str = "token"

    def __post_init__(self):
        if self.loss_average not in step_lib.LOSS_AVERAGES:
            raise ValueError(
                f"loss_average must be one of {step_lib.LOSS_AVERAGES}: {self.loss_average!r}"
            )


def init_params(model_cfg: ModelConfig, seed: int, shardings: dict) -> dict[str, jax.Array]:
    """Random float32 parameters {path: array} created directly in their shards (one jit, no
    host copy)."""

    def make():
        model = Qwen25VL(model_cfg, rngs=nnx.Rngs(seed))
        return flatten(nnx.to_pure_dict(nnx.state(model)))

    return jax.jit(make, out_shardings=shardings)()


class Trainer:
    """Owns the mesh, the shardings, the compiled step and the checkpoint manager.

    opts: how the model runs (compute dtype, attention backend, remat); master weights stay
    float32. step: how a step is formed (`StepConfig`). objective: what the step minimises
    (default: next-token cross-entropy, `step_lib.NextTokenLoss`); its `batch_type` is the
    schema of the batches `step` takes."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        optim: OptimConfig,
        opts: RunOptions,
        mesh: jax.sharding.Mesh,
        workdir: str | None = None,
        *,
        step: StepConfig = StepConfig(),
        objective: step_lib.Objective | None = None,
        save_every: int = 100,
        keep: int = 3,
        async_save: bool = True,
    ):
        self.model_cfg, self.optim, self.opts, self.mesh = model_cfg, optim, opts, mesh
        self.objective = objective or step_lib.next_token_objective(
            step.loss_average, step.loss_chunk
        )
        self.replicated = NamedSharding(mesh, PartitionSpec())
        graphdef, abstract_state = nnx.split(
            nnx.eval_shape(lambda: Qwen25VL(model_cfg, rngs=nnx.Rngs(0)))
        )
        self.graphdef = graphdef
        self.param_shardings = flatten(nnx.to_pure_dict(state_shardings(abstract_state, mesh)))
        shapes = {k: v.shape for k, v in flatten(nnx.to_pure_dict(abstract_state)).items()}
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
        lr_group = "llm" if optim.train_llm else ("merger" if optim.train_merger else "vit")
        step_fn = functools.partial(
            step_lib.train_step,
            graphdef=graphdef,
            optimizer=self.optimizer,
            opts=opts,
            objective=self.objective,
            accum_steps=step.accum_steps,
            lr_fn=schedule(optim, optim.group_lr(lr_group)),
        )
        self._step = jax.jit(
            step_fn,
            in_shardings=(self.state_shardings, self.batch_shardings()),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )
        self.manager = None
        if workdir is not None:
            manager_options = ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            )
            self.manager = ocp.CheckpointManager(os.path.abspath(workdir), options=manager_options)

    def _moment_sharding(self, keypath, leaf, shapes) -> NamedSharding:
        """An optimizer-state leaf stored under a parameter's path (Adam moments) is sharded as
        that parameter; counts and other scalars are replicated."""
        for k in reversed(keypath):  # optax keeps the moments in dicts keyed by the paths
            name = getattr(k, "key", None)
            if isinstance(name, str) and shapes.get(name) == leaf.shape:
                return self.param_shardings[name]
        return self.replicated

    # ---- state ------------------------------------------------------------------------------
    def batch_shardings(self) -> Batch:
        """The shardings of the objective's batch schema (`Batch` or a subclass)."""
        return field_shardings(self.objective.batch_type, self.mesh)

    def init_state(
        self, params: dict | None = None, seed: int = 0, *, init_seed: int | None = None
    ) -> step_lib.TrainState:
        """A fresh state (step 0, PRNG key of `seed`) from `params` (the nested parameter dict
        of `nnx.to_pure_dict`, any placement), else random weights drawn with `init_seed`
        (default `seed`)."""
        flat = self.initial_params(params, seed if init_seed is None else init_seed)
        trainable, frozen = split_trainable(flat, self.optim)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(
            trainable
        )
        rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), self.replicated)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
        return step_lib.TrainState(step, trainable, frozen, opt_state, rng)

    def initial_params(self, params: dict | None, init_seed: int) -> dict[str, jax.Array]:
        """Flat float32 weights {path: array} in their shards: `params` (the nested dict of
        `nnx.to_pure_dict`, any placement), else random weights drawn with `init_seed` (the
        same every call: DPO's reference is the initial weights, also after a resume)."""
        if params is None:
            return init_params(self.model_cfg, init_seed, self.param_shardings)
        return {
            k: jax.device_put(jnp.asarray(v, jnp.float32), self.param_shardings[k])
            for k, v in flatten(params).items()
        }

    def abstract_state(self) -> step_lib.TrainState:
        """The state as `jax.ShapeDtypeStruct`s with their shardings (nothing allocated): what
        `restore` reads into, and what `lower` compiles against."""
        params, opt_state = self._abstract
        trainable, frozen = split_trainable(params, self.optim)
        sh = self.state_shardings
        leaf = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
        rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
        return step_lib.TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated),
            trainable=jax.tree.map(leaf, trainable, sh.trainable),
            frozen=jax.tree.map(leaf, frozen, sh.frozen),
            opt_state=jax.tree.map(leaf, opt_state, sh.opt_state),
            rng=leaf(rng, self.replicated),
        )

    def lower(self, batch: Batch) -> jax.stages.Lowered:
        """The step lowered for `batch` (arrays or `jax.ShapeDtypeStruct`s) on the abstract
        state: `.compile().memory_analysis()` without allocating a weight
        (benchmarks/memory_plan.py)."""
        with jax.set_mesh(self.mesh):  # as `step`: the model's constraints read the mesh
            return self._step.lower(self.abstract_state(), batch)

    def global_batch(self, local: Batch) -> Batch:
        """Assembles the global batch from each process's rows (host NumPy)."""
        vocab = self.model_cfg.text.vocab_size
        if np.max(local.tokens, initial=0) >= vocab or np.max(local.targets, initial=0) >= vocab:
            # an embedding gather would silently clamp: a tokenizer / config mismatch
            raise ValueError(
                f"batch holds token ids >= the model's vocab_size {vocab}: does the tokenizer "
                "match the model config?"
            )
        return jax.tree.map(
            lambda sh, a: jax.make_array_from_process_local_data(sh, np.asarray(a)),
            self.batch_shardings(),
            local,
        )

    def step(self, state: step_lib.TrainState, local: Batch, prepare=None):
        """One step on this process's rows `local`. prepare: a function of the global batch
        run on the mesh before the step (DPO's reference forward fills `ref_logps`)."""
        # the ambient mesh: the model's sharding constraints and its context-parallel
        # attention (a `context` axis) read it when the step is traced
        with jax.set_mesh(self.mesh):
            batch = self.global_batch(local)
            return self._step(state, batch if prepare is None else prepare(batch))

    # ---- checkpoints ------------------------------------------------------------------------
    def save(
        self,
        state: step_lib.TrainState,
        data_state: dict | None,
        *,
        step: int | None = None,
        force=False,
    ) -> bool:
        """Saves `state` when its step is due (every `save_every`) or `force`; True if it did.
        step: `state.step` as the caller counts it on the host. Reading `state.step` waits for
        the step to finish, so a loop that saves every step would no longer prepare the next
        batch while the device computes."""
        if self.manager is None:
            return False
        step = int(state.step) if step is None else step
        if not (force or self.manager.should_save(step)) or step in self.manager.all_steps():
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

        abstract = self.abstract_state()
        items = ocp.args.Composite(
            params=ocp.args.StandardRestore(unflatten({**abstract.trainable, **abstract.frozen})),
            opt_state=ocp.args.StandardRestore(abstract.opt_state),
            train=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=items)
        trainable, frozen = split_trainable(flatten(restored.params), self.optim)
        meta = restored.train
        rng = jax.device_put(np.asarray(meta["rng"], np.uint32), self.replicated)
        step_array = jax.device_put(jnp.asarray(meta["step"], jnp.int32), self.replicated)
        state = step_lib.TrainState(step_array, trainable, frozen, restored.opt_state, rng)
        return state, meta.get("data")

    def latest_step(self) -> int | None:
        return None if self.manager is None else self.manager.latest_step()

    def close(self):
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
