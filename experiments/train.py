"""Trains Qwen2.5-VL on a device mesh: the report's stages and SFT, with exact resumption.

  python -m experiments.train --config=experiments/configs/sft.py:7b --workdir=/ckpt/run1 \
      --config.model.init_checkpoint=/ckpt/qwen25vl-7b --config.optim.lr=2e-5 \
      --config.data.paths=/data/sft/*.jsonl --config.data.media_root=/data/sft

Data: JSONL / ArrayRecord records (`--config.data.paths`, required); random tokens only with
`--config.data.source=synthetic`. Bad records are skipped and counted by reason (metrics.jsonl,
TensorBoard, the progress line; a warning above `data.warn_skipped_fraction`), and
`data.max_consecutive_bad` of them in a row stop the run naming the last. Bad input ends the
run with one line (`train: error: ...`, exit status 2).

A workdir that already holds a checkpoint resumes from its latest complete step (model,
optimizer, PRNG key and data-iterator state). Multi-host: on TPU pods and GPU clusters
`jax.distributed.initialize()` auto-detects; elsewhere pass --coordinator_address,
--num_processes and --process_id (and --cpu_collectives=gloo on CPUs).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from experiments.configs import base
from qwen25vl_jax.cli_errors import InputError, input_errors, require_flags, run
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.pipeline_counts import skip_metrics, skip_warning
from qwen25vl_jax.dataclass_dict import from_plain
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.precision import define_precision_flag, set_matmul_precision
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train.metrics import MetricWriter, Throughput, batch_flops, peak_flops
from qwen25vl_jax.train.optimizer import OptimConfig
from qwen25vl_jax.train.synthetic import SyntheticBatches
from qwen25vl_jax.train.trainer import StepConfig, Trainer

config_flags.DEFINE_config_file("config", None, "training config file (experiments/configs)")
flags.DEFINE_string("workdir", None, "checkpoints and TensorBoard logs")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
flags.DEFINE_enum("cpu_collectives", None, ["gloo", "mpi"], "CPU collectives for multi-process")
flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() (auto-detect)")
flags.DEFINE_float("peak_tflops", None, "per-device peak TFLOP/s for MFU where not known")
define_precision_flag("default")  # compute is bfloat16 for every preset: float32 passes cost
FLAGS = flags.FLAGS


def init_distributed():
    if FLAGS.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", FLAGS.cpu_collectives)
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def model_and_params(c, mesh) -> tuple[ModelConfig, dict | None]:
    """(ModelConfig, nested float32 params or None for random init) from the config's model
    section: an Orbax checkpoint (restored straight into the mesh's shards) or a Hugging Face
    directory, whose config.json gives the architecture, else the preset with its overrides."""
    m = c.model
    init = m.init_checkpoint or m.init_hf_dir
    overrides = m.overrides.to_dict()
    if init and overrides:
        raise InputError(
            f"config model.overrides {sorted(overrides)} apply to a preset, but the architecture "
            f"of {init} is its config.json"
        )
    if not init:
        return ModelConfig.preset(m.preset, overrides), None
    from flax import nnx

    from qwen25vl_jax.loading import LOAD_ERRORS, load_model

    which = "init_checkpoint" if m.init_checkpoint else "init_hf_dir"
    with input_errors(*LOAD_ERRORS, prefix=f"--config.model.{which}: "):
        model, model_cfg = load_model(
            checkpoint=m.init_checkpoint or None,
            hf_dir=m.init_hf_dir or None,
            dtype="float32",
            mesh=mesh,
        )
    return model_cfg, nnx.to_pure_dict(nnx.state(model))


def check_data_config(c) -> None:
    """`InputError` for a data config that cannot feed the run: checked before any model or
    checkpoint loads. The global batch must split over the processes (every source); records
    need `data.paths` matching files; random tokens must be asked for."""
    if c.train.batch_size % jax.process_count():
        raise InputError(
            f"--config.train.batch_size={c.train.batch_size} is not divisible by "
            f"the {jax.process_count()} processes"
        )
    if c.data.source not in ("records", "synthetic"):
        raise InputError(f"--config.data.source={c.data.source!r}: expected records or synthetic")
    if c.train.objective not in OBJECTIVES:
        raise InputError(f"--config.train.objective={c.train.objective!r}: expected {OBJECTIVES}")
    if c.train.objective == "dpo" and c.data.source != "records":
        raise InputError("--config.train.objective=dpo trains on preference records (data.paths)")
    if c.data.source == "records" and not c.data.paths:
        raise InputError(
            "--config.data.paths is empty: give JSONL / ArrayRecord files (globs, "
            "comma separated), or --config.data.source=synthetic to train on random "
            "tokens"
        )
    if c.data.curriculum_steps < 0:
        raise InputError(f"--config.data.curriculum_steps={c.data.curriculum_steps} < 0")
    curriculum = c.data.curriculum_steps > 0
    if curriculum and (c.data.source != "records" or not c.data.curriculum_paths):
        raise InputError(
            f"--config.data.curriculum_steps={c.data.curriculum_steps} needs records: "
            "--config.data.curriculum_paths (and data.source=records)"
        )
    if c.data.source == "records":
        from qwen25vl_jax.data.record_sources import record_files

        record_files([p for p in c.data.paths.split(",") if p])
        if curriculum:
            record_files([p for p in c.data.curriculum_paths.split(",") if p])


def make_data(c, model_cfg: ModelConfig):
    """This host's iterator of `Batch`es: the Grain pipeline over `data.paths` (after
    `data.curriculum_steps` batches of `data.curriculum_paths` when a curriculum is set), or
    random tokens when `data.source=synthetic` is asked for. `InputError` for a config that
    cannot feed the run."""
    check_data_config(c)
    d = c.data
    if d.source == "synthetic":
        return SyntheticBatches(
            model_cfg,
            Bucket(d.seq_len, d.num_slots),
            batch_size=c.train.batch_size,
            seed=c.train.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            repeat=d.synthetic_repeat,
        )
    main = functools.partial(records_data, c, model_cfg, d.paths)
    if d.curriculum_steps > 0:
        from qwen25vl_jax.data.curriculum import StagedBatches

        first = functools.partial(records_data, c, model_cfg, d.curriculum_paths)
        return StagedBatches([(d.curriculum_steps, first), (None, main)])
    return main()


def records_data(c, model_cfg: ModelConfig, paths: str):
    """The Grain records pipeline over `paths` (comma-separated files or globs)."""
    from qwen25vl_jax.data.pipeline import (
        PipelineConfig,
        check_vocabulary,
        make_train_iterator,
        pipeline_tokenizer,
    )

    d = c.data
    records = base.record_options(d)
    # pad with <|endoftext|> (the config's bos id): in range for any vocabulary
    pipe = PipelineConfig(
        paths=tuple(p for p in paths.split(",") if p),
        media_root=d.media_root,
        buckets=(Bucket(d.seq_len, d.num_slots),),
        batch_size=c.train.batch_size // jax.process_count(),
        seed=c.train.seed,
        num_epochs=None,
        num_workers=d.workers,
        sample_cache_mb=d.sample_cache_mb,
        oversize=d.oversize,
        on_bad_record=d.bad_records,
        pad_id=model_cfg.bos_token_id,
        records=records,
        tokenizer_path=d.tokenizer_dir or None,
        max_consecutive_bad=d.max_consecutive_bad,
    )
    with input_errors(OSError, ValueError, prefix="--config.data.tokenizer_dir: "):
        tokenizer = pipeline_tokenizer(pipe)
    check_vocabulary(tokenizer, model_cfg, d.tokenizer_dir or "Qwen2.5 (offline)")
    if c.train.objective == "dpo":  # preference pairs, both replies of a pair in one row
        from qwen25vl_jax.data.preference_pipeline import make_preference_iterator

        pairs = c.dpo.pairs_per_row
        return make_preference_iterator(pipe, model_cfg, tokenizer, pairs_per_row=pairs)
    return make_train_iterator(pipe, model_cfg, tokenizer=tokenizer)


def train(c, workdir: str) -> list[float]:
    """Runs the configured training; returns the losses of the steps it ran."""
    with input_errors(ValueError):  # unknown or mistyped config keys, named
        base.check_keys(c)
    check_data_config(c)  # before a checkpoint loads: a bad data config fails in seconds
    objective = make_objective(c)  # and a bad `dpo` section
    with input_errors(ValueError, prefix="--config.mesh: "):  # axes that miss the devices
        mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, context=c.mesh.context)
    model_cfg, params = model_and_params(c, mesh)
    check_context_split(c, model_cfg)
    data = make_data(c, model_cfg)  # before the workdir exists: a bad data config writes nothing
    fresh = not os.path.exists(workdir)
    try:
        return _train(c, workdir, mesh, model_cfg, params, data, objective)
    except InputError:
        if fresh and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)  # failed before anything was written: leave no empty workdir
        raise
    finally:  # stops Grain's worker processes now, not in a destructor at exit
        if hasattr(data, "close"):
            data.close()


OBJECTIVES = ("next_token", "dpo")


def make_objective(c):
    """The `Objective` of `train.objective` (None: the trainer's next-token default)."""
    if c.train.objective != "dpo":
        return None
    from qwen25vl_jax.train.dpo import DPOConfig, DPOLoss

    with input_errors(ValueError):
        return DPOLoss.from_config(from_plain(DPOConfig, c.dpo.to_dict(), where="dpo"),
                                   chunk=c.step.loss_chunk)  # fmt: skip


def dpo_reference(c, trainer: Trainer, params, model_cfg: ModelConfig, workdir: str):
    """DPO's reference (`train/dpo_reference.py`): the initial weights (`params`, else the
    random init of model.init_seed), kept on the mesh or scored over the run's batches first."""
    from qwen25vl_jax.train import dpo_reference as ref

    initial = trainer.initial_params(params, c.model.init_seed)
    chunk = c.step.loss_chunk
    if c.dpo.reference == "weights":
        return ref.WeightsReference(trainer, initial, chunk)
    batches = make_data(c, model_cfg)  # a fresh iterator: the batches of steps 0, 1, ...
    try:
        return ref.precompute(trainer, initial, batches, c.train.steps, workdir, chunk)
    finally:  # stops its Grain workers now
        if hasattr(batches, "close"):
            batches.close()


def check_context_split(c, model_cfg: ModelConfig) -> None:
    """`InputError` unless `mesh.context` splits each row into equal shards of whole tokens and
    whole ViT windows (else the sharding rules would silently leave the row unsplit)."""
    ctx, windows = c.mesh.context, model_cfg.vision.window_patches
    if ctx > 1 and (c.data.seq_len % ctx or c.data.num_slots % (ctx * windows)):
        raise InputError(
            f"--config.mesh.context={ctx} must divide data.seq_len ({c.data.seq_len}) and "
            f"data.num_slots ({c.data.num_slots}) into whole {windows}-slot ViT windows"
        )


def next_batch(data, step: int, steps: int):
    try:
        return next(data)
    except StopIteration:
        raise InputError(f"the data ran out at step {step} of {steps}") from None


def _train(c, workdir: str, mesh, model_cfg: ModelConfig, params, data, objective) -> list[float]:
    with input_errors(ValueError):
        optim = from_plain(OptimConfig, c.optim.to_dict(), where="optim")
        opts = from_plain(RunOptions, c.run.to_dict(), where="run")
        step = from_plain(StepConfig, c.step.to_dict(), where="step")
    trainer = Trainer(
        model_cfg,
        optim,
        opts,
        mesh,
        workdir,
        step=step,
        objective=objective,
        save_every=c.train.save_every,
        keep=c.train.keep,
        async_save=c.train.async_save,
    )
    pending = None
    if trainer.latest_step() is not None:
        state, data_state = trainer.restore()
        if data_state is not None:
            data.set_state(data_state)
        logging.info("resumed from step %d", int(state.step))
        if jax.process_index() == 0:  # what was restored, beside the progress lines
            where = json.dumps(data.get_state())
            print(f"[train] resumed from step {int(state.step)}, data {where}", flush=True)
    else:  # the first batch is read before the model is initialised: bad data fails fast
        pending = next_batch(data, 0, c.train.steps) if c.train.steps > 0 else None
        state = trainer.init_state(params, seed=c.train.seed, init_seed=c.model.init_seed)
    reference = None
    if c.train.objective == "dpo":
        reference = dpo_reference(c, trainer, params, model_cfg, workdir)
    del params
    writer = MetricWriter(workdir)
    # MFU over every device of the mesh, `context` included: a context-split row's FLOPs are
    # counted once (batch_flops, real tokens) and shared by the devices that split it
    meter = Throughput(
        jax.device_count(),
        peak_flops(jax.devices()[0], FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops else None),
    )
    losses, flops, real, padded, since = [], 0.0, 0.0, 0.0, 0
    step = int(state.step)
    warned = False
    while step < c.train.steps:
        batch = pending if pending is not None else next_batch(data, step, c.train.steps)
        pending = None
        f = batch_flops(model_cfg, batch, optim)["total"] * jax.process_count()
        if reference is not None:  # DPO: the reference's log-probs of this batch's pairs
            batch = reference.fill(step, batch)
        state, metrics = trainer.step(state, batch, reference and reference.prepare)
        step += 1
        flops, since = flops + f, since + 1
        real += float((batch.segment_ids > 0).sum()) * jax.process_count()
        padded += batch.segment_ids.size * jax.process_count()
        trainer.save(state, data.get_state(), step=step)
        if step % c.train.log_every == 0 or step == c.train.steps:
            metrics = jax.device_get(metrics)
            losses.append(float(metrics["loss"]))
            scalars = {**metrics, **meter.update(flops, real, padded, since)}
            if hasattr(data, "counts"):  # the records pipeline: skipped records by reason
                scalars.update(skip_metrics(data.counts))
                warning = skip_warning(data.counts, c.data.warn_skipped_fraction)
                if warning and not warned:
                    warned = True
                    logging.warning(warning)
            writer.write(step, scalars)
            flops, real, padded, since = 0.0, 0.0, 0.0, 0
    trainer.save(state, data.get_state(), step=step, force=True)
    trainer.close()
    writer.close()
    return losses


def config_and_setup(example: str):
    """The --config (`InputError` for a missing or unloadable one, `example` in the message)
    after --workdir is checked, the matmul precision set and multi-host JAX initialised."""
    with input_errors(OSError, prefix="--config: "):  # a config file that failed to load
        config = FLAGS.config  # (ml_collections defers the error to the first use)
        if config is not None:
            config.keys()
    if config is None:
        raise InputError(f"--config is required, e.g. --config={example}")
    require_flags("workdir")
    set_matmul_precision(FLAGS.matmul_precision)
    init_distributed()
    return config


def main(argv):
    del argv
    config = config_and_setup("experiments/configs/sft.py:7b")
    np.set_printoptions(precision=6)
    train(config, FLAGS.workdir)


if __name__ == "__main__":
    run(main, "train")
