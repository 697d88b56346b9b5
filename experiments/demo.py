"""The main job: a tiny Qwen2.5-VL learns grounding, counting and video timing on a CPU, end to end.

  python -m experiments.demo [--workdir=out/demo]

1. data: synthetic images, videos and JSONL records (`experiments/synthetic_tasks.py`);
2. tokenizer: a small byte-level BPE with the Qwen2.5-VL special tokens
   (`qwen25vl_jax/data/small_vocab.py`);
3. training from scratch with `experiments/train.py` of the tiny model the config gives
   (`experiments/configs/demo.py`; random weights drawn by the trainer; Grain pipeline with
   packing, the batch sharded over the host's CPU devices, Orbax checkpoints, TensorBoard logs,
   progress lines);
4. evaluation on held-out records with KV-cache generation (`experiments/eval.py`): metrics
   beside their trivial baselines, predicted and true boxes drawn into a PNG; the earlier
   checkpoints the trainer saved (every `train.save_every` steps, all kept) on the first
   `CURVE_RECORDS` held-out records (they interleave the three tasks), for the curves;
5. a short report, also written as JSON: the table, the training-curves PNG (loss and each
   metric at each checkpoint against its baseline), and whether this run falls inside the
   range the README publishes over seeds 0-4 (`experiments/published.py`).

Outputs under --workdir: data/, tokenizer/, train/ (checkpoints <step>/, metrics.jsonl,
tensorboard/), boxes.png, curves.png, report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import flags

from qwen25vl_jax import cli_errors
from qwen25vl_jax.cli_errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "demo.py")
# held-out records scored at the intermediate checkpoints: ~1/4 of the default 400 keeps the
# four extra evaluations (800 / 200 steps) to ~1/4 of the final one's time each
CURVE_RECORDS = 100
# the records of the config's first `data.curriculum_steps` steps: the task whose answer is
# learnt last, if at all, in the full mix (BUILD_NOTES §6)
CURRICULUM_TASK = "timing"


def log(msg: str) -> None:
    print(msg, flush=True)


def prepare(
    workdir: str, num_train: int, num_eval: int, seed: int = 0, *, mix=None
) -> tuple[dict[str, str], int]:
    """Writes the data and the tokenizer; returns their paths and the tokenizer's vocabulary
    size. mix: (grounding, counting, timing) record shares (default `synthetic_tasks.MIX`)."""
    from experiments import synthetic_tasks
    from qwen25vl_jax.data.records import decode_record, parse_record
    from qwen25vl_jax.data.small_vocab import (
        TOKEN_IDS,
        build_small_tokenizer,
        chat_texts,
        model_token_ids,
        save_small_tokenizer,
    )

    mix = synthetic_tasks.MIX if mix is None else tuple(mix)
    paths = synthetic_tasks.generate(
        os.path.join(workdir, "data"), num_train, num_eval, seed=seed, mix=mix
    )
    with open(paths["train"]) as f:
        convs = [parse_record(decode_record(ln, "train"), "train").messages for ln in f]
    tokenizer = build_small_tokenizer(chat_texts(convs))
    if model_token_ids(tokenizer) != TOKEN_IDS:  # the ids experiments/configs/demo.py gives
        raise ValueError(f"small tokenizer ids {model_token_ids(tokenizer)} != {TOKEN_IDS}")
    paths["tokenizer"] = str(save_small_tokenizer(tokenizer, os.path.join(workdir, "tokenizer")))
    paths["curriculum"] = task_records(paths["train"], CURRICULUM_TASK)
    return paths, tokenizer.get_vocab_size()


def task_records(path: str, task: str) -> str:
    """Writes the records of `path` (JSONL) whose "task" is `task` beside it; returns the path."""
    out = os.path.join(os.path.dirname(path), f"{os.path.basename(path)[:-6]}_{task}.jsonl")
    with open(path) as f, open(out, "w") as g:
        g.writelines(line for line in f if json.loads(line)["task"] == task)
    return out


def train_command(paths: dict[str, str], train_dir: str, overrides=()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={CONFIG}",
        f"--workdir={train_dir}",
        f"--config.data.paths={paths['train']}",
        f"--config.data.curriculum_paths={paths['curriculum']}",
        f"--config.data.media_root={paths['media_root']}",
        f"--config.data.tokenizer_dir={paths['tokenizer']}",
        *overrides,
    ]


def run_training(paths, train_dir: str, *, devices: int, overrides=()) -> None:
    """Runs experiments/train.py in a child process (its own JAX, with `devices` host CPU
    devices to shard the batch over); its progress lines stream through."""
    env = dict(os.environ)
    xla = env.get("XLA_FLAGS", "")
    if devices > 1 and "xla_force_host_platform_device_count" not in xla:
        env["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={devices}".strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = train_command(paths, train_dir, overrides)
    log("[demo] " + " ".join(cmd[1:]))
    code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    if code:  # its own error line is already on stderr
        raise InputError(f"experiments.train exited with status {code}")


def run(
    workdir: str,
    *,
    num_train: int = 3000,
    num_eval: int = 400,
    steps: int | None = None,
    devices: int = 2,
    eval_batch: int = 16,
    seed: int = 0,
    overrides=(),
    mix=None,
    model_args=None,
) -> dict:
    """The whole job; returns the report (also written to <workdir>/report.json).

    overrides: extra `--config.*` flags for experiments/train.py; mix: see `prepare`;
    model_args: fields of the demo model's text config to change (e.g. {"num_layers": 3});
    seed: the data's and the initial weights' (`model.init_seed`)."""
    from experiments import eval as evaluation
    from experiments.configs import base
    from experiments.configs import demo as demo_config
    from experiments.curves import draw_curves, read_losses

    t0 = time.perf_counter()
    times = {}
    os.makedirs(workdir, exist_ok=True)
    log(f"[demo] 1/4 data, tokenizer -> {workdir}")
    paths, vocab_size = prepare(workdir, num_train, num_eval, seed, mix=mix)
    overrides = (
        f"--config.model.overrides.text.vocab_size={vocab_size}",
        f"--config.model.init_seed={seed}",
        *(f"--config.model.overrides.text.{k}={v}" for k, v in (model_args or {}).items()),
        *overrides,
    )
    times["prepare_s"] = time.perf_counter() - t0

    log("[demo] 2/4 training from scratch (experiments/train.py)")
    train_dir = os.path.join(workdir, "train")
    shutil.rmtree(train_dir, ignore_errors=True)  # from scratch, not a resume
    if steps is not None:
        overrides = (
            f"--config.train.steps={steps}",
            f"--config.optim.total_steps={steps}",
            *overrides,
        )
    overrides = ("--config.train.keep=1000", *overrides)  # every saved step, for the curves
    t = time.perf_counter()
    run_training(paths, train_dir, devices=devices, overrides=overrides)
    times["train_s"] = time.perf_counter() - t

    log("[demo] 3/4 held-out evaluation with KV-cache generation (experiments/eval.py)")
    t = time.perf_counter()
    from qwen25vl_jax.checkpoint import checkpoint_steps, latest_checkpoint, load_checkpoint
    from qwen25vl_jax.data.tokenizer import load_tokenizer

    ckpt = latest_checkpoint(train_dir)
    c = demo_config.get_config()
    c.data.media_root = paths["media_root"]
    options = base.record_options(c.data)
    tokenizer = load_tokenizer(paths["tokenizer"])
    png = os.path.join(workdir, "boxes.png")
    points = []  # the curves' checkpoints: the earlier ones on CURVE_RECORDS records, then all
    for step in checkpoint_steps(train_dir):
        final = os.path.join(train_dir, str(step)) == ckpt
        model, _ = load_checkpoint(os.path.join(train_dir, str(step)))
        result = evaluation.evaluate(
            model,
            tokenizer,
            paths["eval"],
            options,
            train_data=paths["train"],
            max_samples=None if final else CURVE_RECORDS,
            batch_size=eval_batch,
            draw=png if final else None,
            log=log if final else lambda _: None,
        )
        kept = {
            m: {k: v[k] for k in ("model", "baseline", "n")} for m, v in result["metrics"].items()
        }
        points.append({"step": step, "metrics": kept})
        if not final:
            log(
                f"[demo] step {step} on {CURVE_RECORDS} held-out records: "
                + ", ".join(
                    f"{m} {v['model']:.3f} (baseline {v['baseline']:.3f})" for m, v in kept.items()
                )
            )
    curves_png = os.path.join(workdir, "curves.png")
    draw_curves(read_losses(os.path.join(train_dir, "metrics.jsonl")), points, curves_png)
    times["eval_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    report = {
        "metrics": result["metrics"],
        "beats_baseline": result["beats_baseline"],
        "baselines": result["baselines"],
        "checkpoint": ckpt,
        "steps": int(os.path.basename(ckpt)),
        "curve": points,
        "published": compare_published(result["metrics"]),
        "times": times,
        "load_average": list(os.getloadavg()),
        "files": {
            "boxes_png": png,
            "curves_png": curves_png,
            "metrics_jsonl": os.path.join(train_dir, "metrics.jsonl"),
            "tensorboard": os.path.join(train_dir, "tensorboard"),
            **paths,
        },
        "samples": result["samples"][:20],
    }
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log("[demo] 4/4 report")
    log(evaluation.format_table(result["metrics"]))
    beaten = sum(report["beats_baseline"].values())
    log(
        f"[demo] the model beats every baseline on {beaten} of {len(report['beats_baseline'])} "
        f"metrics; "
        f"{report['steps']} steps; wall {times['total_s']:.0f} s (data {times['prepare_s']:.0f}, "
        f"train {times['train_s']:.0f}, eval {times['eval_s']:.0f}); load average "
        f"{report['load_average'][0]:.1f}"
    )
    log(format_published(report["published"], seed))
    log(
        f"[demo] curves: {curves_png}; boxes: {png}; report: "
        f"{os.path.join(workdir, 'report.json')}; TensorBoard: tensorboard "
        f"--logdir={report['files']['tensorboard']}"
    )
    return report


def compare_published(metrics: dict) -> dict:
    """{metric: {"run": v, "mean", "min", "max": the README's seeds, "place": "inside" |
    "better" | "worse"}} against the published range (`experiments.published`)."""
    from experiments import published

    out = {}
    for name in published.DEMO["seeds"][min(published.DEMO["seeds"])]:
        if name in metrics:
            run_v = metrics[name]["model"]
            place = published.place(name, run_v)
            out[name] = {"run": run_v, **published.spread(name), "place": place}
    return out


def format_published(compared: dict, seed: int) -> str:
    """One line per metric: this run beside the README's mean and range over seeds, and a last
    line saying whether the run falls inside that range."""
    from experiments.metrics import METRICS
    from experiments.published import DEMO

    seeds = ",".join(str(s) for s in sorted(DEMO["seeds"]))
    lines = [
        f"[demo] against the README's seeds {seeds} ({DEMO['steps']} steps, {DEMO['date']}, "
        f"{DEMO['machine']}; this run: seed {seed}):"
    ]
    words = {"inside": "inside the range", "better": "BETTER than every published seed",
             "worse": "WORSE than every published seed"}  # fmt: skip
    for name, v in compared.items():
        lines.append(
            f"[demo]   {METRICS[name][2]:<23} {v['run']:.3f}; published mean {v['mean']:.3f}, "
            f"range {v['min']:.3f}-{v['max']:.3f}: {words[v['place']]}"
        )
    outside = [METRICS[n][2] for n, v in compared.items() if v["place"] != "inside"]
    lines.append(
        "[demo] this run falls inside the published range on every metric"
        if not outside
        else f"[demo] this run falls OUTSIDE the published range on: {', '.join(outside)}"
    )
    return "\n".join(lines)


def main(argv):
    del argv
    f = flags.FLAGS
    for name in ("num_train", "num_eval", "devices", "steps"):
        if f[name].value is not None and f[name].value < 1:
            raise InputError(f"--{name}={f[name].value}: must be at least 1")
    run(
        f.workdir,
        num_train=f.num_train,
        num_eval=f.num_eval,
        steps=f.steps,
        devices=f.devices,
        seed=f.seed,
    )


if __name__ == "__main__":  # flags defined here only: importing the module defines none
    flags.DEFINE_string("workdir", "out/demo", "where everything is written")
    flags.DEFINE_integer("num_train", 3000, "training records")
    flags.DEFINE_integer("num_eval", 400, "held-out records")
    flags.DEFINE_integer("steps", None, "training steps (default: the config's)")
    flags.DEFINE_integer("devices", 2, "host CPU devices the training batch is sharded over")
    flags.DEFINE_integer("seed", 0, "data and initialisation seed")
    cli_errors.run(main, "demo")
