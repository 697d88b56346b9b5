"""GRPO after the main job: the demo's SFT checkpoint, improved on the synthetic grounding and
counting prompts with verifiable rewards, evaluated beside the SFT checkpoint.

  python -m experiments.demo_rl [--sft_dir=out/demo] [--workdir=out/demo_rl] [--steps=N]

1. RL prompts from the demo's training records (`synthetic_tasks.write_rl_prompts`: grounding
   and counting questions, the answer turned into the truth a reward reads);
2. GRPO (`experiments/rl.py` with `experiments/configs/grpo.py:demo`) from the latest
   checkpoint under <sft_dir>/train: samples from the trainer's own parameters, rewards
   format + IoU + exact count, metrics.jsonl and TensorBoard under <workdir>/train;
3. the held-out evaluation of `experiments/eval.py` (the same questions, generation and
   baselines as `make demo`) of the SFT and the RL checkpoint, side by side, and the reward
   curves (`rewards.png`). Everything is also written to <workdir>/report.json.
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
CONFIG = os.path.join(REPO, "experiments", "configs", "grpo.py") + ":demo"
PER_TASK = 450  # the counting records of the demo's 3000
CURVES = ("reward", "reward_iou", "reward_count", "reward_format", "kl", "response_length")


def log(msg: str) -> None:
    print(msg, flush=True)


def rl_command(sft_ckpt, data_dir, tokenizer_dir, prompts, train_dir, steps, seed) -> list[str]:
    """experiments/rl.py's command line for the demo (config `grpo.py:demo`)."""
    steps_flags = [f"--config.train.steps={steps}", f"--config.optim.total_steps={steps}"]
    return [
        sys.executable,
        "-m",
        "experiments.rl",
        f"--config={CONFIG}",
        f"--workdir={train_dir}",
        f"--config.model.init_checkpoint={sft_ckpt}",
        f"--config.data.paths={prompts}",
        f"--config.data.media_root={data_dir}",
        f"--config.data.tokenizer_dir={tokenizer_dir}",
        f"--config.train.seed={seed}",
        *(steps_flags if steps is not None else []),
    ]


def evaluate_checkpoint(ckpt: str, c, data_dir: str, tokenizer) -> dict:
    """`experiments.eval.evaluate` of one checkpoint on the demo's held-out records."""
    from experiments import eval as evaluation
    from experiments.configs import base
    from qwen25vl_jax.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    return evaluation.evaluate(
        model,
        tokenizer,
        os.path.join(data_dir, "eval.jsonl"),
        base.record_options(c.data),
        train_data=os.path.join(data_dir, "train.jsonl"),
        batch_size=16,
        log=lambda _: None,
    )


def side_by_side(sft: dict, rl: dict) -> str:
    """A plain-text table: each metric of the SFT and the RL checkpoint, the change, and the
    strongest trivial baseline."""
    from experiments.metrics import METRICS

    lines = [f"{'task':<10} {'metric':<23} {'n':>4} {'SFT':>7} {'RL':>7} {'change':>7} {'base':>7}"]
    for name, (task, _, desc) in METRICS.items():
        if name in sft and name in rl:
            a, b = sft[name]["model"], rl[name]["model"]
            lines.append(
                f"{task:<10} {desc:<23} {sft[name]['n']:>4} {a:>7.3f} {b:>7.3f} {b - a:>+7.3f} "
                f"{sft[name]['baseline']:>7.3f}"
            )
    return "\n".join(lines)


def draw_rewards(history: list[dict], path: str) -> None:
    """One panel per curve of `CURVES` the run logged, against the RL step."""
    from experiments.curves import MODEL_COLOUR, draw_panels

    panels = [
        (name, [([(h["step"], h[name]) for h in history if name in h], MODEL_COLOUR, False)], None)
        for name in CURVES
        if any(name in h for h in history)
    ]
    steps = [h["step"] for h in history]
    draw_panels(panels, path, "GRPO from the SFT checkpoint: per RL step", (min(steps), max(steps)))


def run(sft_dir: str, workdir: str, *, steps=None, seed: int = 0, devices: int = 2) -> dict:
    from experiments.configs import grpo as grpo_config
    from experiments.synthetic_tasks import write_rl_prompts
    from qwen25vl_jax.checkpoint import latest_checkpoint
    from qwen25vl_jax.data.tokenizer import load_tokenizer

    data_dir, tokenizer_dir = os.path.join(sft_dir, "data"), os.path.join(sft_dir, "tokenizer")
    for need in (os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "eval.jsonl")):
        if not os.path.isfile(need):
            raise InputError(f"--sft_dir {sft_dir}: no {need}; run `make demo` first")
    try:
        sft_ckpt = latest_checkpoint(os.path.join(sft_dir, "train"))
    except (ValueError, OSError) as err:
        raise InputError(f"--sft_dir {sft_dir}: {err}; run `make demo` first") from None
    os.makedirs(workdir, exist_ok=True)
    prompts = os.path.join(workdir, "prompts.jsonl")
    # as many grounding as counting prompts: the demo's records hold 4x more grounding
    n = write_rl_prompts(os.path.join(data_dir, "train.jsonl"), prompts, per_task=PER_TASK)
    log(f"[demo-rl] 1/3 {n} grounding / counting RL prompts -> {prompts}")

    c = grpo_config.get_config("demo")
    c.data.media_root = data_dir  # the evaluation decodes media as the RL run does
    train_dir = os.path.join(workdir, "train")
    shutil.rmtree(train_dir, ignore_errors=True)  # from the SFT checkpoint, not a resume
    cmd = rl_command(sft_ckpt, data_dir, tokenizer_dir, prompts, train_dir, steps, seed)
    log(f"[demo-rl] 2/3 GRPO from {sft_ckpt}: " + " ".join(cmd[1:]))
    env = dict(os.environ)
    if devices > 1:  # the batch split over this many host CPU devices, as `make demo` trains
        xla = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={devices}".strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    t0 = time.perf_counter()
    if subprocess.run(cmd, cwd=REPO, env=env).returncode:  # its error line is on stderr
        raise InputError("experiments.rl failed")
    rl_seconds = time.perf_counter() - t0
    rl_ckpt = latest_checkpoint(train_dir)
    with open(os.path.join(train_dir, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]

    log("[demo-rl] 3/3 held-out evaluation of both checkpoints (experiments/eval.py)")
    t1 = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir)
    sft = evaluate_checkpoint(sft_ckpt, c, data_dir, tokenizer)["metrics"]
    rl = evaluate_checkpoint(rl_ckpt, c, data_dir, tokenizer)["metrics"]
    png = os.path.join(workdir, "rewards.png")
    draw_rewards(history, png)
    report = {
        "sft_checkpoint": sft_ckpt,
        "rl_checkpoint": rl_ckpt,
        "sft": sft,
        "rl": rl,
        "rl_seconds": rl_seconds,
        "eval_seconds": time.perf_counter() - t1,
        "load_average": list(os.getloadavg()),
        "config": c.rl.to_dict(),
        "history": history,
        "files": {"rewards_png": png, "metrics_jsonl": os.path.join(train_dir, "metrics.jsonl")},
    }
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(side_by_side(sft, rl))
    log(f"[demo-rl] GRPO {rl_seconds:.0f} s ({len(history)} steps), evaluation "
        f"{report['eval_seconds']:.0f} s, load average {report['load_average'][0]:.1f}; "
        f"reward curves: {png}; report: {os.path.join(workdir, 'report.json')}")  # fmt: skip
    return report


def main(argv):
    del argv
    f = flags.FLAGS
    for name in ("steps", "devices"):
        if f[name].value is not None and f[name].value < 1:
            raise InputError(f"--{name}={f[name].value}: must be at least 1")
    run(f.sft_dir, f.workdir, steps=f.steps, seed=f.seed, devices=f.devices)


if __name__ == "__main__":  # flags defined here only: importing the module defines none
    flags.DEFINE_string("sft_dir", "out/demo", "the main job's --workdir (data, tokenizer, train)")
    flags.DEFINE_string("workdir", "out/demo_rl", "where everything is written")
    flags.DEFINE_integer("steps", None, "RL steps (default: the config's)")
    flags.DEFINE_integer("seed", 0, "sampling and prompt-order seed")
    flags.DEFINE_integer("devices", 2, "host CPU devices the RL batch is sharded over")
    cli_errors.run(main, "demo-rl")
