"""Decoding on a GPU: milliseconds per generated token of the 7B model in bf16 at batch 1 and
16 after a 256-token prompt, ours against transformers' `generate` on the same weights and GPU,
beside the memory roofline (the bytes of weights a decode step must read / the bandwidth).

Ours is timed as `Generator` runs it (prefill, then the compiled decode loop, `decode`) in
variants that isolate what a step spends beyond the weight reads:
- `f32 masters`: weights held in float32 and cast to bf16 at every use (what a step did before
  `Generator(weights_dtype=)`): reads 2x the bytes and converts every weight every step;
- `bf16`: weights held in bf16 (the default now);
- `bf16 unrolled`: also the layer scan unrolled (`RunOptions(unroll=True)`): a scanned layer
  reads its weights through a dynamic slice of the stacked [layers, ...] array, which may copy
  them before each matmul.
Transformers: bf16, sdpa attention, `generate` greedy with its default (dynamic) cache; per-token
times from a streamer's timestamps. Greedy tokens are compared (bf16 on both sides: a near-tie
may differ; the float32 equality is `tests/test_generate.py`'s).

Without a GPU (or with --dry_run) it runs `benchmarks.common.bench_config()` on the CPU, so that
GPU time goes to measuring, not debugging; it then says that no GPU figure was measured.

Usage: python benchmarks/gpu_decode_bench.py [--preset=7b] [--text_layers=N] [--batches=1,16]
           [--prompt=256] [--new_tokens=64] [--bandwidth_gbs=4800] [--repeats=3] [--dry_run]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import StreamClock, bench_config  # noqa: E402
from qwen25vl_jax.config import PRESETS, ModelConfig  # noqa: E402
from qwen25vl_jax.hf_weights import load_hf  # noqa: E402
from qwen25vl_jax.inference import Generator  # noqa: E402
from qwen25vl_jax.model.options import RunOptions  # noqa: E402
from tests.cases import make_case  # noqa: E402
from tests.hf_reference import build_hf_model, hf_inputs_to_torch  # noqa: E402

flags.DEFINE_enum("preset", "7b", list(PRESETS), "released size (GPU mode)")
flags.DEFINE_integer("text_layers", None, "decoder layers (default: the preset's)")
flags.DEFINE_list("batches", ["1", "16"], "batch sizes")
flags.DEFINE_integer("prompt", 256, "prompt tokens per row (text only)")
flags.DEFINE_integer("new_tokens", 64, "tokens generated per row")
flags.DEFINE_float("bandwidth_gbs", 4800.0, "the GPU's memory bandwidth (H200: 4800 GB/s)")
flags.DEFINE_integer("repeats", 3, "timed repeats (median reported)")
flags.DEFINE_bool("torch", True, "also time transformers")
flags.DEFINE_bool("dry_run", False, "bench_config on the CPU: checks the script runs")
FLAGS = flags.FLAGS


def decode_weight_bytes(cfg: ModelConfig, itemsize: int = 2) -> int:
    """Bytes of weights one decode step reads: every decoder layer and the lm_head (the
    embedding is a gather of B rows; the ViT does not run)."""
    t = cfg.text
    q, kv = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    layer = t.hidden_size * (q + 2 * kv) + q + 2 * kv  # q, k, v projections with biases
    layer += q * t.hidden_size + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size
    return itemsize * (t.num_layers * layer + t.hidden_size * t.vocab_size + t.hidden_size)


def time_ours(gen: Generator, arrays: dict, n: int, repeats: int) -> tuple[float, np.ndarray]:
    """(seconds per decode step after the first token, the greedy tokens)."""
    out = {}

    def run():
        ds, st, _ = gen.start(arrays, max_new_tokens=n, stop_tokens=())
        jax.block_until_ready(ds.last)
        t0 = time.perf_counter()
        ds = gen.decode(ds, st, n)
        out["tokens"] = np.asarray(ds.tokens)[:, :n]  # on the host: the loop has finished
        out["seconds"] = time.perf_counter() - t0

    seconds = []
    run()  # compiles
    for _ in range(repeats):
        run()
        seconds.append(out["seconds"])
    return float(np.median(seconds)) / (n - 1), out["tokens"]


def time_transformers(hf, cfg, arrays: dict, n: int, repeats: int, device: str):
    """(seconds per decode step after the first token, the greedy tokens)."""
    kw = {k: v.to(device) for k, v in hf_inputs_to_torch(cfg, arrays).items()}
    length = arrays["input_ids"].shape[1]
    out = {}

    def run():
        clock = StreamClock()
        with torch.no_grad():
            tokens = hf.generate(
                **kw, max_new_tokens=n, do_sample=False, streamer=clock, pad_token_id=0
            )
        out["tokens"] = tokens[:, length:].cpu().numpy()
        out["per_step"] = (clock.times[-1] - clock.times[1]) / (n - 1)

    per_step = []
    run()  # warm-up
    for _ in range(repeats):
        run()
        per_step.append(out["per_step"])
    return float(np.median(per_step)), out["tokens"]


def main(argv):
    del argv
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    dry = FLAGS.dry_run or not on_gpu
    if dry:
        cfg, prompt, n, repeats = bench_config(), 24, 8, 1
        torch.set_num_threads(1)
    else:
        layers = {"text": {"num_layers": FLAGS.text_layers}} if FLAGS.text_layers else None
        cfg = ModelConfig.preset(FLAGS.preset, layers)
        prompt, n, repeats = FLAGS.prompt, FLAGS.new_tokens, FLAGS.repeats
    device = "cpu" if dry else "cuda"
    with tempfile.TemporaryDirectory() as d:
        hf = build_hf_model(cfg, std=0.02).to(torch.bfloat16)
        hf.save_pretrained(d)
        model, _ = load_hf(d, param_dtype=jnp.float32)  # float32 masters, as after training
    hf = hf.to(device)
    hf.set_attn_implementation("sdpa")
    hf.generation_config.eos_token_id = None  # no stop token: every run makes n tokens
    roofline = decode_weight_bytes(cfg) / (FLAGS.bandwidth_gbs * 1e9)
    where = f"DRY RUN on {jax.default_backend()}" if dry else jax.devices()[0].device_kind
    print(
        f"{where}: decoder {cfg.text.num_layers} x {cfg.text.hidden_size}, vocab "
        f"{cfg.text.vocab_size}; bf16; prompt {prompt} tokens; {n} new tokens; median of "
        f"{repeats}; weights read per step {decode_weight_bytes(cfg) / 1e9:.2f} GB = "
        f"{roofline * 1e3:.2f} ms at {FLAGS.bandwidth_gbs:.0f} GB/s"
    )
    bf16 = jnp.bfloat16
    variants = {
        "ours f32 masters": dict(opts=RunOptions(dtype=bf16), weights_dtype=jnp.float32),
        "ours bf16": dict(opts=RunOptions(dtype=bf16)),
        "ours bf16 unrolled": dict(opts=RunOptions(dtype=bf16, unroll=True)),
    }
    for batch in [int(b) for b in FLAGS.batches]:
        arrays = make_case(cfg, [[prompt]] * batch, seed=0)
        results, tokens = {}, {}
        for name, kw in variants.items():
            gen = Generator(model, cache_bucket=128, **kw)
            results[name], tokens[name] = time_ours(gen, arrays, n, repeats)
            del gen
        if FLAGS.torch:
            name = "transformers sdpa"
            results[name], tokens[name] = time_transformers(hf, cfg, arrays, n, repeats, device)
        ref = results.get("transformers sdpa")
        print(f"batch {batch}:")
        for name, seconds in results.items():
            same = (tokens[name] == tokens["ours bf16"]).all(0).cumprod().sum()
            vs = f"  {ref / seconds:5.2f}x transformers" if ref else ""
            print(
                f"  {name:22s} {seconds * 1e3:8.2f} ms/step  roofline {roofline / seconds:6.1%}"
                f"  tokens = ours bf16 for {same}/{n}{vs}"
            )
    if dry:
        print("DRY RUN: CPU figures of a small model; no GPU figure was measured.")


if __name__ == "__main__":
    app.run(main)
