"""Conversion throughput (MB/s) and peak RSS, both directions, on a synthetic multi-GB release.

The model has the released widths of one size (default 3B: text 2048 / MLP 11008 / vocabulary
151936, ViT 1280; `--widths=72b` gives the 72B per-layer tensors) with fewer layers, random
bfloat16 weights, written as a sharded release. Each direction runs
as its own program under a fresh parent, which reads `RUSAGE_CHILDREN.ru_maxrss`; the baseline
is the same interpreter importing the converters and doing nothing. The export is checked
bit-exact against the source.

Usage: python benchmarks/convert_bench.py [--widths=3b] [--text_layers=8] [--vision_depth=8]
           [--workdir=/tmp] [--keep]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile

import ml_dtypes
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoints_convert import same_bytes  # noqa: E402
from checkpoints_convert.orbax_to_hf import LazyTensor, write_release  # noqa: E402
from checkpoints_convert.progress import run_measured  # noqa: E402
from qwen25vl_jax.config import ModelConfig, TextConfig, VisionConfig  # noqa: E402
from qwen25vl_jax.hf_weights import RULES, expected_names, stacked_shape  # noqa: E402
from qwen25vl_jax.safetensors_io import SafetensorsDir  # noqa: E402

flags.DEFINE_enum("widths", "3b", ["3b", "7b", "32b", "72b"], "released widths to use")
flags.DEFINE_integer("text_layers", 8, "decoder layers")
flags.DEFINE_integer("vision_depth", 8, "ViT blocks")
flags.DEFINE_string("workdir", None, "where to write the three copies (default: a temp dir)")
flags.DEFINE_bool("keep", False, "keep the files")
FLAGS = flags.FLAGS
BF16 = np.dtype(ml_dtypes.bfloat16)


def bench_config(widths: str, text_layers: int, vision_depth: int) -> ModelConfig:
    base = getattr(ModelConfig, f"qwen25vl_{widths}")()
    full = tuple(i for i in base.vision.fullatt_block_indexes if i < vision_depth)
    vision = {**base.vision.__dict__, "depth": vision_depth, "fullatt_block_indexes": full}
    text = {**base.text.__dict__, "num_layers": text_layers}
    return ModelConfig(vision=VisionConfig(**vision), text=TextConfig(**text))


def write_source(path: str, cfg: ModelConfig) -> None:
    """A sharded release of random bfloat16 tensors, generated one tensor at a time."""
    os.makedirs(path)
    rng = np.random.default_rng(0)
    rand = lambda shape: rng.random(shape, np.float32) - 0.5  # noqa: E731
    shapes = [(name, r.hf_shape(cfg)) for r, _, name in expected_names(cfg)]
    tensors = [(name, LazyTensor(s, BF16, lambda s=s: rand(s))) for name, s in shapes]
    write_release(path, cfg, tensors, max_shard_bytes=2 * 10**9)


def steady_rate(stderr: str) -> float:
    """The converter's own last MB/s (excludes interpreter start-up and the read-back check)."""
    rates = re.findall(r"([\d.]+) MB/s", stderr)
    return float(rates[-1]) if rates else float("nan")


def main(argv):
    del argv
    cfg = bench_config(FLAGS.widths, FLAGS.text_layers, FLAGS.vision_depth)
    sizes = [int(np.prod(stacked_shape(r, cfg))) * BF16.itemsize for r in RULES if r.when(cfg)]
    total, largest = sum(sizes), max(sizes)
    work = tempfile.mkdtemp(prefix="convert_bench-", dir=FLAGS.workdir)
    src, ck, out = (os.path.join(work, n) for n in ("src", "ck", "hf"))
    try:
        write_source(src, cfg)
        py = sys.executable
        base = run_measured(
            [py, "-c", "import checkpoints_convert.hf_to_orbax, checkpoints_convert.orbax_to_hf"]
        )
        runs = {
            "hf_to_orbax": run_measured(
                [
                    py,
                    "-m",
                    "checkpoints_convert.hf_to_orbax",
                    f"--hf_dir={src}",
                    f"--output_dir={ck}",
                ]
            ),
            "orbax_to_hf": run_measured(
                [
                    py,
                    "-m",
                    "checkpoints_convert.orbax_to_hf",
                    f"--checkpoint={ck}",
                    f"--output_dir={out}",
                ]
            ),
        }
        for name, r in runs.items():
            if r["returncode"]:
                raise SystemExit(f"{name} failed:\n{r['stderr'][-3000:]}")
        a, b = SafetensorsDir(src), SafetensorsDir(out)
        exact = sorted(a.keys()) == sorted(b.keys()) and all(
            same_bytes(a.read(k), b.read(k)) for k in a.keys()
        )
        print(
            f"model: {total / 1e9:.2f} GB bfloat16 ({cfg.text.num_layers} decoder layers, "
            f"{cfg.vision.depth} ViT blocks, {FLAGS.widths.upper()} widths); largest stacked "
            f"parameter {largest / 1e6:.0f} MB; baseline RSS {base['peak_rss'] / 1e6:.0f} MB; "
            f"round trip bit-exact: {exact}"
        )
        print(
            "| direction | wall s | MB/s end to end | MB/s steady | peak RSS MB | "
            "above baseline MB |"
        )
        print("|---|---|---|---|---|---|")
        rows = {}
        for name, r in runs.items():
            above = (r["peak_rss"] - base["peak_rss"]) / 1e6
            rows[name] = {
                "wall_s": r["wall_s"],
                "mb_s": total / r["wall_s"] / 1e6,
                "steady_mb_s": steady_rate(r["stderr"]),
                "peak_rss_mb": r["peak_rss"] / 1e6,
                "above_baseline_mb": above,
            }
            x = rows[name]
            print(
                f"| {name} | {x['wall_s']:.1f} | {x['mb_s']:.0f} | {x['steady_mb_s']:.0f} | "
                f"{x['peak_rss_mb']:.0f} | {x['above_baseline_mb']:.0f} |"
            )
        print(
            json.dumps(
                {
                    "model_bytes": total,
                    "largest_stack_bytes": largest,
                    "baseline_rss_mb": base["peak_rss"] / 1e6,
                    "bit_exact": exact,
                    **rows,
                }
            )
        )
    finally:
        if not FLAGS.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
