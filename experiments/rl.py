"""GRPO with verifiable rewards on a device mesh, from an SFT checkpoint, with exact resumption.

  python -m experiments.rl --config=experiments/configs/grpo.py:7b --workdir=/ckpt/rl1 \
      --config.model.init_checkpoint=/ckpt/sft/3000 --config.data.paths=/data/rl/*.jsonl \
      --config.data.media_root=/data/rl --config.rl.rewards.iou=1.0 --config.rl.kl_coef=0.04

Each step samples `rl.group_size` completions for each of `rl.prompts_per_step` prompts from
the *current* parameters (the trainer state's own sharded arrays: `Generator.on_params`), scores
them with the configured rewards (`qwen25vl_jax/train/rewards.py`), and takes `rl.num_updates`
optimizer steps of the GRPO objective (`qwen25vl_jax/train/grpo.py`; the loop is
`qwen25vl_jax/train/rollout.py`). Prompts: RL prompt records (`data/rl_prompts.py`), bad ones
skipped and counted (or `data.bad_records=raise`). The model, mesh, checkpoints (Orbax,
`Trainer`), metrics (TensorBoard + metrics.jsonl) and error handling are experiments/train.py's.
The KL reference is the initial weights (`model.init_checkpoint` / `init_hf_dir`), also on
resume. The prompts of step s are a fixed function of (train.seed, s): resuming replays them.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging

from experiments import train as train_lib
from experiments.configs import base
from experiments.configs.grpo import LOSS_KEYS
from qwen25vl_jax.cli_errors import InputError, input_errors, run
from qwen25vl_jax.dataclass_dict import from_plain
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train.grpo import GRPOLoss
from qwen25vl_jax.train.metrics import MetricWriter
from qwen25vl_jax.train.optimizer import OptimConfig
from qwen25vl_jax.train.rollout import GRPORunner, RolloutConfig
from qwen25vl_jax.train.trainer import StepConfig, Trainer

# the flags are experiments/train.py's (--config, --workdir, --matmul_precision, multi-host)
FLAGS = flags.FLAGS


def read_sections(c) -> tuple[RolloutConfig, GRPOLoss, int]:
    """The `rl` section as (RolloutConfig, GRPOLoss, prompts_per_step), strictly: ValueError
    naming an unknown key; the other sections are checked as experiments/train.py does."""
    base.check_keys(ml_collections.ConfigDict({k: v for k, v in c.items() if k != "rl"}))
    rl = c.rl.to_dict()
    loss_kw = {k: rl.pop(k) for k in LOSS_KEYS if k in rl}
    prompts_per_step = rl.pop("prompts_per_step", 1)
    rollout = from_plain(RolloutConfig, rl, where="rl")
    loss = GRPOLoss(temperature=rollout.temperature, chunk=c.step.loss_chunk, **loss_kw)
    if prompts_per_step < 1 or rollout.num_updates < 1:
        raise ValueError("rl.prompts_per_step and rl.num_updates must be at least 1")
    return rollout, loss, prompts_per_step


def prompt_files(c) -> list[str]:
    """The files of `data.paths` (globs, comma separated); `InputError` naming what is wrong."""
    from qwen25vl_jax.data.record_sources import record_files

    if not c.data.paths:
        raise InputError("--config.data.paths is empty: give JSONL files of RL prompt records")
    return record_files([p for p in c.data.paths.split(",") if p])


def load_prompts(c, model_cfg, tokenizer):
    """The RL prompts of `data.paths` (skipped records logged by reason). `InputError` when
    none is usable."""
    from qwen25vl_jax.data.rl_prompts import read_rl_prompts

    on_bad = "raise" if c.data.bad_records == "raise" else "skip"
    options = base.record_options(c.data)
    prompts, skipped = [], []
    for path in prompt_files(c):
        got, bad = read_rl_prompts(
            path, cfg=model_cfg, tokenizer=tokenizer, options=options, on_bad=on_bad
        )
        prompts += got
        skipped += bad
    if skipped:
        reasons = {r: sum(e.reason == r for e in skipped) for r in {e.reason for e in skipped}}
        logging.warning("skipped %d RL prompt records %s; the first: %s", len(skipped), reasons,
                        skipped[0])  # fmt: skip
    if not prompts:
        raise InputError(f"{c.data.paths}: no usable RL prompt ({len(skipped)} skipped)")
    return prompts


def step_prompts(prompts: list, step: int, per_step: int, seed: int) -> list:
    """The prompts of `step`: epoch e's permutation (seeded by (seed, e)), consecutive slices
    (a pure function of step: a resumed run draws the same)."""
    n = len(prompts)
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        order = np.random.default_rng((seed, i // n)).permutation(n)
        out.append(prompts[int(order[i % n])])
    return out


def train_rl(c, workdir: str) -> list[dict]:
    """Runs the configured GRPO training; returns the metrics of the steps it ran."""
    from qwen25vl_jax.data.pipeline import check_vocabulary
    from qwen25vl_jax.data.tokenizer import build_qwen_tokenizer, load_tokenizer

    with input_errors(ValueError):
        rollout, loss, per_step = read_sections(c)
        optim = from_plain(OptimConfig, c.optim.to_dict(), where="optim")
        opts = from_plain(RunOptions, c.run.to_dict(), where="run")
        step_cfg = from_plain(StepConfig, c.step.to_dict(), where="step")
    if loss.kl_coef and not (c.model.init_checkpoint or c.model.init_hf_dir):
        raise InputError("rl.kl_coef > 0 needs the reference: set model.init_checkpoint")
    prompt_files(c)  # before a checkpoint loads: a bad data config fails in seconds
    mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    with input_errors(OSError, ValueError, prefix="--config.data.tokenizer_dir: "):
        d = c.data.tokenizer_dir
        tokenizer = load_tokenizer(d) if d else build_qwen_tokenizer()
    model_cfg, params = train_lib.model_and_params(c, mesh)
    check_vocabulary(tokenizer, model_cfg, c.data.tokenizer_dir or "Qwen2.5 (offline)")
    prompts = load_prompts(c, model_cfg, tokenizer)  # before the workdir: bad data writes nothing
    trainer = Trainer(model_cfg, optim, opts, mesh, workdir, step=step_cfg, objective=loss,
                      save_every=c.train.save_every, keep=c.train.keep,
                      async_save=c.train.async_save)  # fmt: skip
    step = 0
    if trainer.latest_step() is not None:
        state, data_state = trainer.restore()
        step = int((data_state or {}).get("rl_step", 0))
        print(f"[rl] resumed from RL step {step}", flush=True)
    else:
        state = trainer.init_state(params, seed=c.train.seed, init_seed=c.model.init_seed)
    reference = None
    if loss.kl_coef:  # the initial weights, kept apart from the (donated) training state
        reference = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
    del params
    runner = GRPORunner(trainer, tokenizer, rollout, reference=reference)
    writer = MetricWriter(workdir)
    key = jax.random.key(c.train.seed)
    history = []
    while step < c.train.steps:
        batch = step_prompts(prompts, step, per_step, c.train.seed)
        state, metrics, texts = runner.step(state, batch, jax.random.fold_in(key, step))
        step += 1
        trainer.save(state, {"rl_step": step}, step=step)
        history.append({"step": step, **metrics})
        if step % c.train.log_every == 0 or step == c.train.steps:
            writer.write(step, metrics)
            logging.info("step %d sample: %r", step, texts[0])
    trainer.save(state, {"rl_step": step}, step=step, force=True)
    trainer.close()
    writer.close()
    return history


def main(argv):
    del argv
    config = train_lib.config_and_setup("experiments/configs/grpo.py:7b")
    history = train_rl(config, FLAGS.workdir)
    if history:
        last = {k: round(v, 4) for k, v in history[-1].items()}
        print(f"[rl] done: {json.dumps(last)}", flush=True)


if __name__ == "__main__":
    run(main, "rl")
