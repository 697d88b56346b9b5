"""Runs variants of the main job side by side and prints their held-out metrics in one table.

How the demo's settings were chosen (BUILD_NOTES §6): each variant is `experiments.demo.run` with
some settings changed, in its own process (its training in a child of that), under
<workdir>/<variant>-s<seed>/. On 2 CPU cores run one at a time; on a GPU machine
(`JAX_PLATFORMS=cuda`) a dozen fit side by side: the step takes milliseconds there and the data
preparation of each run (one CPU core per worker) is the limit.

  python -m experiments.demo_sweep --workdir=/tmp/sweep --variants=demo,v5 --seeds=0,1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

# the demo as committed before the sweep (BUILD_NOTES §6 run 5): 3 decoder layers, 4 rows of 512
# tokens, 640 steps, mix .55/.17/.28, rope_theta 10, Adam b2 0.999
V5 = {
    "model": {"num_layers": 3, "rope_theta": 10.0},
    "mix": [0.55, 0.17, 0.28],
    "steps": 640,
    "overrides": [
        "--config.data.seq_len=512",
        "--config.data.num_slots=768",
        "--config.train.batch_size=4",
        "--config.optim.b2=0.999",
    ],
}
MIX70 = {"mix": [0.7, 0.15, 0.15]}
VARIANTS = {
    "demo": {},  # the committed experiments/configs/demo.py and synthetic_tasks.MIX
    "v5": V5,
    "v5_mix70": {**V5, **MIX70},
    "v5_layers4": {**V5, "model": {"num_layers": 4}},
    "v5_steps1000": {**V5, "steps": 1000},
    "v5_mix70_layers4_steps1000": {**V5, **MIX70, "model": {"num_layers": 4}, "steps": 1000},
    "v5_grounding_only": {**V5, "mix": [1.0, 0.0, 0.0]},
    "v5_seq256": {**V5, "overrides": []},
    "v5_records6000": {**V5, "num_train": 6000},
    # the demo before issue 17's sweep: Adam b2 0.999, rope_theta 10
    "theta10_b2_999": {"overrides": ["--config.optim.b2=0.999"], "model": {"rope_theta": 10.0}},
    "theta10": {"model": {"rope_theta": 10.0}},  # b2 0.95 alone
    # issue 17's timing question (BUILD_NOTES §6, "Reliability over seeds"): time's share of the
    # rotary pairs, and slow pairs beside fast ones for height and width
    "sections655": {"model": {"mrope_section": "(6,5,5)"}},
    "theta10_sections448": {"model": {"rope_theta": 10.0, "mrope_section": "(4,4,8)"}},
    # timing answers are 2 tokens against a box's 33: each sample weighs the same, not each token
    # ("token_average" is the demo's setting before; "sqrt_average" the one since)
    "sample_average": {"overrides": ["--config.step.loss_average=sample"]},
    "token_average": {"overrides": ["--config.step.loss_average=token"]},
    "sqrt_average": {"overrides": ["--config.step.loss_average=sqrt"]},
    # grounding on seed 1 with sqrt (0.422 / 0.454, bars 0.45 / 0.5): a larger step learnt it
    # there but missed it on seed 2 (BUILD_NOTES §6, "Learning rate 3e-3 and 1100 steps"; not kept)
    "lr3e3": {"overrides": ["--config.optim.lr=3e-3"]},
    # more steps (the schedule stretched with them): scanned, seed 1's grounding did not move
    # (0.430 / 0.458; BUILD_NOTES §6, "Learning rate 3e-3 and 1100 steps"); unrolled, every bar
    # held on seeds 0, 1, 2, 4 and the demo config took it (BUILD_NOTES §6, "Unrolled layers")
    "steps1100": {"steps": 1100},
    # the layer scans unrolled, 900 steps (the demo config's setting before 1100 steps): 13%
    # less per step on 2 host devices; seed 4 then missed timing
    "unroll": {"overrides": ["--config.run.unroll=True"], "steps": 900},
    # grounding missed one seed of five while timing was exact on all: a larger grounding share
    # met grounding on seeds 3 and 1 but missed timing on 1 (BUILD_NOTES §6; not adopted)
    "mix65": {"mix": [0.65, 0.15, 0.2]},
    # the same grounding share with timing's kept nearer its 25%, then at 25% with grounding's
    # 5 points from counting alone: on seed 1 the first missed timing (0.90 s), the second
    # grounding and counting; a mix redraws every record (BUILD_NOTES §6, "A fifth decoder
    # layer"; neither adopted)
    "mix65_12": {"mix": [0.65, 0.12, 0.23]},
    "mix65_10": {"mix": [0.65, 0.1, 0.25]},
    # a 5th decoder layer: every bar on seeds 0-4, not on 5 and 6 (BUILD_NOTES §6, "A fifth
    # decoder layer"); the demo config took it. "layers4": the config before (658ae00's figures)
    "layers5": {"model": {"num_layers": 5}},
    "layers4": {"model": {"num_layers": 4}},
    # fewer rows a step, more steps: the jitted step costs ~0.025 s + ~0.037 s a row on 2 cores.
    # Both learnt seed 6's timing; batch6 then missed its grounding, batch4 failed seed 5 on
    # three tasks (BUILD_NOTES §6, "Fewer rows, more steps"; neither adopted)
    "batch6": {"overrides": ["--config.train.batch_size=6"], "steps": 1430},
    "batch4": {"overrides": ["--config.train.batch_size=4"], "steps": 2040},
    # a curriculum: the first N of the 1100 steps on the timing records alone, then the mix.
    # Both learnt timing on seeds 5 and 6; 150 then missed seed 6's grounding, 100 seed 0's
    # grounding and counting (BUILD_NOTES §6, "A timing-first curriculum"; neither adopted)
    "timing_first150": {"overrides": ["--config.data.curriculum_steps=150"]},
    "timing_first100": {"overrides": ["--config.data.curriculum_steps=100"]},
}
KEYS = ("mean_iou", "acc_iou50", "count_acc", "time_mae")


def run_kwargs(name: str, seed: int, num_eval: int, workers: int, steps: int | None = None) -> dict:
    """`demo.run` keyword arguments of one variant and seed; `steps` replaces the variant's."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    v = VARIANTS[name]
    return {
        "num_train": v.get("num_train", 3000),
        "num_eval": num_eval,
        "steps": steps or v.get("steps"),
        "seed": seed,
        "mix": v.get("mix"),
        "model_args": v.get("model"),
        "overrides": [
            *v.get("overrides", []),
            f"--config.data.workers={workers}",
            "--config.train.save_every=100000",
        ],
    }


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def table(rows: list[tuple[str, dict | None]]) -> str:
    """Markdown: one row per run, each metric as `model (baseline)`."""
    out = ["| run | " + " | ".join(KEYS) + " | wall s |", "|" + " --- |" * (len(KEYS) + 2)]
    for name, report in rows:
        if report is None:
            out.append(f"| {name} | " + " | ".join("failed" for _ in KEYS) + " | |")
            continue
        m = report["metrics"]
        cells = [f"{m[k]['model']:.3f} ({m[k]['baseline']:.3f})" if k in m else "-" for k in KEYS]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {report['times']['total_s']:.0f} |")
    return "\n".join(out)


def sweep(
    workdir: str,
    names: list[str],
    seeds: list[int],
    *,
    parallel: int,
    devices: int,
    num_eval: int,
    workers: int,
    deadline_s: float,
    steps: int | None = None,
) -> str:
    """Runs every (variant, seed), `parallel` at a time; returns the table (also table.md)."""
    jobs = [(n, s) for n in names for s in seeds]
    for n, s in jobs:
        run_kwargs(n, s, num_eval, workers, steps)  # unknown names fail before anything runs
    os.makedirs(workdir, exist_ok=True)
    t0, running, done = time.perf_counter(), {}, {}
    while jobs or running:
        while jobs and len(running) < parallel:
            n, s = jobs.pop(0)
            out = os.path.join(workdir, f"{n}-s{s}")
            os.makedirs(out, exist_ok=True)
            spec = json.dumps(
                {"workdir": out, "devices": devices, **run_kwargs(n, s, num_eval, workers, steps)}
            )
            log = open(os.path.join(out, "log.txt"), "w")  # noqa: SIM115 (open while it runs)
            cmd = [sys.executable, "-m", "experiments.demo_sweep", f"--run_one={spec}"]
            running[(n, s)] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        time.sleep(2)
        for key, (proc, log) in list(running.items()):
            timed_out = time.perf_counter() - t0 > deadline_s
            if proc.poll() is None and not timed_out:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            del running[key]
            path = os.path.join(workdir, f"{key[0]}-s{key[1]}", "report.json")
            ok = proc.returncode == 0 and os.path.exists(path)
            done[key] = read_json(path) if ok else None
            print(
                f"[sweep] {key[0]} seed {key[1]}: {'done' if ok else 'FAILED (see log.txt)'} "
                f"at {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        if time.perf_counter() - t0 > deadline_s:
            jobs = []
    rows = [(f"{n} s{s}", done.get((n, s))) for n in names for s in seeds]
    text = table(rows)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(text + "\n")
    return text


def main(argv):
    del argv
    f = flags.FLAGS
    if f.run_one:
        from experiments import demo

        demo.run(**json.loads(f.run_one))
        return
    print(
        sweep(
            f.workdir,
            f.variants.split(","),
            [int(s) for s in f.seeds.split(",")],
            parallel=f.parallel,
            devices=f.devices,
            num_eval=f.num_eval,
            workers=f.workers,
            deadline_s=f.deadline_s,
            steps=f.steps or None,
        )
    )


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "out/sweep", "one folder per variant and seed")
    flags.DEFINE_string("variants", "demo,v5", f"comma-separated, from {sorted(VARIANTS)}")
    flags.DEFINE_string("seeds", "0", "comma-separated data and initialisation seeds")
    flags.DEFINE_integer("parallel", 1, "runs at a time")
    flags.DEFINE_integer("devices", 2, "host CPU devices each run shards its batch over")
    flags.DEFINE_integer("num_eval", 400, "held-out records per run")
    flags.DEFINE_integer("workers", 1, "data preprocessing processes per run")
    flags.DEFINE_integer("steps", 0, "training steps of every run (0: each variant's own)")
    flags.DEFINE_float("deadline_s", 1e9, "runs still going after this are stopped")
    flags.DEFINE_string("run_one", "", "internal: demo.run keyword arguments as JSON")
    app.run(main)
