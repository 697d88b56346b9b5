"""Forward latency of one image + text: ours (jit, XLA CPU) against transformers (torch, sdpa)
on the same random model and inputs, measured in the same run; prints the speed ratio.

Usage: python benchmarks/forward_bench.py [--image_side=448] [--repeats=5]
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import numpy as np
import torch
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import bench_config, best_torch_seconds, median_seconds  # noqa: E402
from qwen25vl_jax.data.hf_format import inputs_from_hf  # noqa: E402
from qwen25vl_jax.hf_weights import load_hf  # noqa: E402
from qwen25vl_jax.model.qwen25vl import forward  # noqa: E402
from tests.cases import make_case  # noqa: E402
from tests.hf_reference import build_hf_model, hf_inputs_to_torch  # noqa: E402

flags.DEFINE_integer("image_side", 448, "image side in pixels (a multiple of 28)")
flags.DEFINE_integer("repeats", 5, "timed runs of each (median reported)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = bench_config()
    side = FLAGS.image_side // 14
    arrays = make_case(cfg, [[20, ("image", (1, side, side)), 40]])
    with tempfile.TemporaryDirectory() as d:
        torch_model = build_hf_model(cfg)
        torch_model.set_attn_implementation("sdpa")
        torch_model.save_pretrained(d)
        model, _ = load_hf(d)
    kw = hf_inputs_to_torch(cfg, arrays)

    def run_torch():
        with torch.no_grad():
            return torch_model(**kw).logits

    inputs, _ = inputs_from_hf(cfg, arrays)
    graphdef, state = nnx.split(model)
    step = jax.jit(forward)
    run_jax = lambda: step(graphdef, state, inputs).block_until_ready()  # noqa: E731

    diff = np.abs(np.asarray(run_jax()) - run_torch().numpy()).max()
    t_torch, threads = best_torch_seconds(run_torch, FLAGS.repeats)
    t_jax = median_seconds(run_jax, FLAGS.repeats)
    n_tok = arrays["input_ids"].shape[1]
    print(
        f"image {FLAGS.image_side}x{FLAGS.image_side} ({side * side} patches), {n_tok} tokens, "
        f"torch threads {threads} (the faster of 1, 2), max |dlogits| {diff:.1e}"
    )
    print(f"transformers forward: {t_torch * 1e3:8.1f} ms")
    print(f"ours (jit) forward:   {t_jax * 1e3:8.1f} ms")
    print(f"speed ratio ours / transformers: {t_torch / t_jax:.2f}x")


if __name__ == "__main__":
    app.run(main)
