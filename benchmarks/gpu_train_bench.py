"""Training step on a GPU: ours at each attention backend and remat policy against transformers
+ torch on the same random model and packed row, printing step time, tokens/s, MFU (the
project's analytic FLOPs, `train.metrics.batch_flops`, ViT included) and the speed ratio.

The default reproduces issue 13's table: the 7B model's widths with the decoder cut to 4
layers and the full 32-block ViT, one row of ~9,654 tokens holding four 672x672 images, bf16
compute with float32 master weights, AdamW. `--widths=3b --text_layers=36` is the 3B model.

Without a GPU (or with --dry_run) it runs a tiny config with the `xla` backend on the CPU (add
`--dry_run_backends=xla,pallas_gpu` to run the kernel, interpreted), so that GPU time goes to
measuring, not debugging; it then says that no GPU figure was measured.

Usage: python benchmarks/gpu_train_bench.py [--widths=7b] [--text_layers=4]
         [--backends=xla,cudnn,pallas_gpu] [--remats=dots,full] [--repeats=5] [--dry_run]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile

import jax
import numpy as np
import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import bench_config, median_seconds  # noqa: E402
from qwen25vl_jax.config import ModelConfig  # noqa: E402
from qwen25vl_jax.data.hf_format import batch_from_hf  # noqa: E402
from qwen25vl_jax.hf_weights import load_hf  # noqa: E402
from qwen25vl_jax.model.options import RunOptions  # noqa: E402
from qwen25vl_jax.sharding import make_mesh  # noqa: E402
from qwen25vl_jax.train.metrics import batch_flops  # noqa: E402
from qwen25vl_jax.train.optimizer import OptimConfig  # noqa: E402
from qwen25vl_jax.train.trainer import Trainer  # noqa: E402
from tests.cases import make_case  # noqa: E402
from tests.hf_reference import build_hf_model, hf_inputs_to_torch  # noqa: E402

flags.DEFINE_enum("widths", "7b", ["3b", "7b"], "released widths of the model (GPU mode)")
flags.DEFINE_integer("text_layers", 4, "decoder layers (the ViT keeps all its blocks)")
flags.DEFINE_integer("images", 4, "672x672 images in the row (GPU mode)")
flags.DEFINE_integer("text_tokens", 7350, "text tokens in the row, spread between the images")
flags.DEFINE_list("backends", ["xla", "cudnn", "pallas_gpu"], "attention backends (GPU mode)")
flags.DEFINE_list("remats", ["dots", "full"], "remat policies (GPU mode)")
flags.DEFINE_integer("repeats", 5, "timed steps of each (median reported)")
flags.DEFINE_float("peak_tflops", 989.0, "the GPU's dense bf16 peak (H100/H200 SXM: 989)")
flags.DEFINE_bool("dry_run", False, "tiny config on the CPU: checks the script runs")
flags.DEFINE_list("dry_run_backends", ["xla"], "backends of the dry run (kernels: interpreted)")
flags.DEFINE_bool("torch", True, "also time transformers + torch")
FLAGS = flags.FLAGS


def _setup(dry: bool):
    """(config, processor-format arrays, supervised mask, backends, remats)."""
    if dry:
        cfg = bench_config()
        rows = [[20, ("image", (1, 16, 16)), 60, ("image", (1, 8, 12)), 40]]
        return cfg, rows, FLAGS.dry_run_backends, ["none", "dots"]
    cfg = ModelConfig.qwen25vl_3b() if FLAGS.widths == "3b" else ModelConfig.qwen25vl_7b()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_layers=FLAGS.text_layers))
    chunk = FLAGS.text_tokens // (FLAGS.images + 1)
    row = []
    for _ in range(FLAGS.images):
        row += [chunk, ("image", (1, 48, 48))]  # 672 px / 14 = 48 patches a side
    row.append(FLAGS.text_tokens - chunk * FLAGS.images)
    return cfg, [row], FLAGS.backends, FLAGS.remats


def _torch_step_fn(torch_model, cfg, arrays, supervised, device: str):
    """One transformers training step: float32 masters, bf16 autocast on GPU, sdpa, AdamW."""
    torch_model.to(device).train()
    torch_model.set_attn_implementation("sdpa")
    fused = device == "cuda"
    adam = torch.optim.AdamW(torch_model.parameters(), lr=1e-5, weight_decay=0.0, fused=fused)
    kw = {k: v.to(device) for k, v in hf_inputs_to_torch(cfg, arrays).items()}
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    with torch.no_grad():
        pos, _ = torch_model.model.get_rope_index(
            kw["input_ids"], kw["mm_token_type_ids"], attention_mask=kw["attention_mask"], **grids
        )
    labels = torch.where(torch.from_numpy(supervised).to(device), kw["input_ids"], -100)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        adam.zero_grad(set_to_none=True)
        with autocast:
            loss = torch_model(**kw, position_ids=pos, labels=labels).loss
        loss.backward()
        adam.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _time_ours(trainer: Trainer, params: dict, batch, repeats: int) -> float:
    """Median seconds of our jitted train step (state donated, as in training)."""
    state = [trainer.init_state(params)]
    gbatch = trainer.global_batch(batch)

    def step():
        state[0], metrics = trainer._step(state[0], gbatch)
        jax.block_until_ready(metrics)

    return median_seconds(step, repeats)


def main(argv):
    del argv
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    dry = FLAGS.dry_run or not on_gpu
    cfg, rows, backends, remats = _setup(dry)
    arrays = make_case(cfg, rows, pad="right")
    supervised = arrays["attention_mask"].astype(bool) & (arrays["input_ids"] < 200)
    optim = OptimConfig(lr=1e-5, warmup_steps=0, total_steps=100, grad_clip=1e9)
    with tempfile.TemporaryDirectory() as d:
        torch_model = build_hf_model(cfg)
        torch_model.save_pretrained(d)
        model, _ = load_hf(d)
    from flax import nnx

    # host copies: each step configuration starts from fresh device arrays (the step donates)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    del model
    batch = batch_from_hf(cfg, arrays, supervised)
    flops = batch_flops(cfg, batch, optim)["total"]
    tokens = float(arrays["attention_mask"].sum())
    peak = FLAGS.peak_tflops * 1e12
    where = f"DRY RUN on {jax.default_backend()}" if dry else jax.devices()[0].device_kind
    patches = int((np.asarray(batch.vit_segment_ids) > 0).sum())
    print(
        f"{where}: 1 row x {arrays['input_ids'].shape[1]} tokens, {patches} ViT patches, "
        f"decoder {cfg.text.num_layers} x {cfg.text.hidden_size}, "
        f"ViT {cfg.vision.depth} x {cfg.vision.hidden_size}; analytic step {flops / 1e12:.3f} TFLOP"
    )
    dtype = "float32" if dry else "bfloat16"  # XLA CPU has no fast bf16 matmul
    repeats = min(FLAGS.repeats, 2) if dry else FLAGS.repeats
    if dry:
        torch.set_num_threads(1)  # the shared CPU: several torch threads collapse
    mesh = make_mesh(devices=jax.devices()[:1])
    results = []
    for backend in backends:
        for remat in remats:
            name = f"ours {backend:10s} remat {remat:5s}"
            opts = RunOptions(dtype=dtype, backend=backend, remat=remat)
            try:
                seconds = _time_ours(Trainer(cfg, optim, opts, mesh), params, batch, repeats)
                results.append((name, seconds))
            except Exception as e:  # an OOM or an unsupported kernel: report it, go on
                print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if FLAGS.torch:
        device = "cpu" if dry else "cuda"
        label = "transformers sdpa" + (" fp32" if dry else " bf16 autocast")
        torch_step = _torch_step_fn(torch_model, cfg, arrays, supervised, device)
        results.append((label, median_seconds(torch_step, repeats)))
    reference = results[-1][1] if FLAGS.torch else None
    for name, seconds in results:
        mfu = "" if dry else f"  MFU {flops / seconds / peak:6.1%}"
        ratio = f"  {reference / seconds:5.2f}x transformers" if reference else ""
        print(f"{name:34s} {seconds * 1e3:9.1f} ms  {tokens / seconds:9.1f} tok/s{mfu}{ratio}")
    if dry:
        print("DRY RUN: CPU figures of a tiny model; no GPU figure was measured.")


if __name__ == "__main__":
    app.run(main)
