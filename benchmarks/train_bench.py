"""Training throughput: ours (jit step, float32) against transformers + torch AdamW on the same
random model and batch, measured in the same run; and the compiled step's FLOPs (XLA cost
analysis) against our analytic count (`train.metrics.batch_flops`).

Usage: python benchmarks/train_bench.py [--repeats=5] [--batch=2]
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import bench_config, best_torch_seconds, median_seconds  # noqa: E402
from qwen25vl_jax.data.hf_format import batch_from_hf  # noqa: E402
from qwen25vl_jax.hf_weights import load_hf  # noqa: E402
from qwen25vl_jax.model.options import RunOptions  # noqa: E402
from qwen25vl_jax.sharding import make_mesh  # noqa: E402
from qwen25vl_jax.train.metrics import batch_flops  # noqa: E402
from qwen25vl_jax.train.optimizer import OptimConfig  # noqa: E402
from qwen25vl_jax.train.trainer import Trainer  # noqa: E402
from tests.cases import make_case  # noqa: E402
from tests.hf_reference import build_hf_model, hf_inputs_to_torch  # noqa: E402

flags.DEFINE_integer("repeats", 5, "timed steps of each (median reported)")
flags.DEFINE_integer("batch", 2, "rows per batch")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = bench_config()
    rows = [[20, ("image", (1, 16, 16)), 200]] * FLAGS.batch
    arrays = make_case(cfg, rows, pad="right")
    supervised = arrays["attention_mask"].astype(bool) & (arrays["input_ids"] < 200)
    optim = OptimConfig(lr=1e-5, warmup_steps=0, total_steps=100, grad_clip=1e9)
    with tempfile.TemporaryDirectory() as d:
        torch_model = build_hf_model(cfg)
        torch_model.set_attn_implementation("sdpa")
        torch_model.save_pretrained(d)
        model, _ = load_hf(d)
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(model))
    torch_model.train()
    adam = torch.optim.AdamW(torch_model.parameters(), lr=1e-5, weight_decay=0.0)
    kw = hf_inputs_to_torch(cfg, arrays)
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    with torch.no_grad():
        pos, _ = torch_model.model.get_rope_index(
            kw["input_ids"], kw["mm_token_type_ids"], attention_mask=kw["attention_mask"], **grids
        )
    labels = torch.where(torch.from_numpy(supervised), kw["input_ids"], -100)

    def torch_step():
        adam.zero_grad()
        torch_model(**kw, position_ids=pos, labels=labels).loss.backward()
        adam.step()

    trainer = Trainer(cfg, optim, RunOptions(dtype="float32"), make_mesh(devices=jax.devices()[:1]))
    batch = batch_from_hf(cfg, arrays, supervised)
    state = [trainer.init_state(params)]
    gbatch = trainer.global_batch(batch)

    def jax_step():
        state[0], metrics = trainer._step(state[0], gbatch)
        jax.block_until_ready(metrics)

    # XLA counts a while loop's body once: analyse a step with the layer scans unrolled
    unrolled = Trainer(cfg, optim, RunOptions(dtype="float32", unroll=True), trainer.mesh)
    compiled = unrolled._step.lower(state[0], gbatch).compile().cost_analysis()
    compiled = compiled[0] if isinstance(compiled, list) else compiled
    analytic = batch_flops(cfg, batch, optim)["total"]
    t_torch, threads = best_torch_seconds(torch_step, FLAGS.repeats)
    t_jax = median_seconds(jax_step, FLAGS.repeats)
    tokens = float(arrays["attention_mask"].sum())
    print(
        f"batch {FLAGS.batch} x {arrays['input_ids'].shape[1]} tokens ({tokens:.0f} real), "
        f"one 224x224 image per row, torch threads {threads} (the faster of 1, 2)"
    )
    print(f"transformers + torch AdamW: {tokens / t_torch:9.1f} tokens/s ({t_torch * 1e3:.0f} ms)")
    print(f"ours (jit step):            {tokens / t_jax:9.1f} tokens/s ({t_jax * 1e3:.0f} ms)")
    print(f"speed ratio ours / transformers: {t_torch / t_jax:.2f}x")
    print(
        f"step FLOPs: compiled (XLA cost analysis) {compiled['flops'] / 1e9:.2f} G, "
        f"analytic {analytic / 1e9:.2f} G, ratio {compiled['flops'] / analytic:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
