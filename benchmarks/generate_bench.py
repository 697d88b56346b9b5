"""Prefill latency and decode tokens/s: ours against transformers' `generate`, one process.

Both run the same random float32 model (`tests.hf_reference.build_hf_model`, saved and loaded
by `load_hf`) on the same prompt (one image + text), greedy, no stop token, on this machine's
CPU (or the default JAX device).

- prefill latency: prompt in -> first token on the host (vision tower included). Ours:
  `Generator.start` (compiled, warm); transformers: `generate` up to its streamer's first token.
- decode tokens/s: batch x (N - 1) / (time from the first to the N-th token). Ours for the
  fused loop (`Generator.decode`, what `generate` runs) and for the per-step loop (`step` with
  a host read per token, what `stream` and the CLI run); transformers from streamer timestamps.

Run:  .venv/bin/python benchmarks/generate_bench.py [--preset=bench|tiny|small|base]
          [--new_tokens=64] [--batch=1] [--repeats=3]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.common import StreamClock, bench_config  # noqa: E402
from qwen25vl_jax.config import ModelConfig  # noqa: E402
from qwen25vl_jax.hf_weights import load_hf  # noqa: E402
from qwen25vl_jax.inference import Generator  # noqa: E402
from tests.cases import make_case  # noqa: E402
from tests.hf_reference import build_hf_model, hf_inputs_to_torch  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "preset",
    "bench",
    ["bench", "tiny", "small", "base"],
    "Model: `bench` = benchmarks.common.bench_config() (shared with the other benchmarks).",
)
flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
flags.DEFINE_integer("batch", 1, "Rows (each: text, an image, text).")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")

# name -> (text overrides, vision overrides, image llm grid (t, h, w) in patches)
PRESETS = {
    "tiny": ({}, {}, (1, 16, 20)),
    "small": (  # 20M parameters: 4 layers of width 256, a 32k vocabulary
        dict(
            vocab_size=32000,
            hidden_size=256,
            intermediate_size=704,
            num_layers=4,
            num_heads=8,
            num_kv_heads=2,
            head_dim=32,
            mrope_section=(4, 6, 6),
        ),
        dict(
            depth=4,
            hidden_size=128,
            intermediate_size=256,
            num_heads=4,
            window_size=112,
            fullatt_block_indexes=(1, 3),
        ),
        (1, 28, 40),
    ),
    "base": (  # 97M parameters: 8 layers of width 512, a 64k vocabulary
        dict(
            vocab_size=65536,
            hidden_size=512,
            intermediate_size=1408,
            num_layers=8,
            num_heads=8,
            num_kv_heads=2,
            head_dim=64,
            mrope_section=(8, 12, 12),
        ),
        dict(
            depth=8,
            hidden_size=256,
            intermediate_size=512,
            num_heads=4,
            window_size=112,
            fullatt_block_indexes=(3, 7),
        ),
        (1, 28, 40),
    ),
}


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """{name: median (prefill s, decode s)} of each fn() -> (prefill, decode). The runs are
    interleaved (one of each per round) so that load changes on a shared machine hit all alike;
    each fn is warmed up (compiled) first."""
    for fn in fns.values():
        fn()
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(fn())
    return {k: tuple(statistics.median(r[i] for r in v) for i in range(2)) for k, v in runs.items()}


def main(argv):
    del argv
    if FLAGS.preset == "bench":
        cfg, grid = bench_config(), (1, 28, 40)
    else:
        text, vision, grid = PRESETS[FLAGS.preset]
        cfg = ModelConfig.tiny(vision=vision, **text)
    n, reps = FLAGS.new_tokens, FLAGS.repeats
    arrays = make_case(cfg, [[40, ("image", grid), 24]] * FLAGS.batch, seed=0)
    hf = build_hf_model(cfg)
    hf.generation_config.eos_token_id = None  # no stop token: every run makes n tokens
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model, _ = load_hf(d)
    n_params = sum(p.numel() for p in hf.parameters())
    gen = Generator(model)
    kw = hf_inputs_to_torch(cfg, arrays)
    b, length = arrays["input_ids"].shape
    hf_tokens = []

    def hf_run():
        clock = StreamClock()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(
                **kw,
                max_new_tokens=n,
                do_sample=False,
                streamer=clock,
                pad_token_id=cfg.bos_token_id,
            )
        hf_tokens[:] = [out[:, length:].numpy()]
        # puts: the prompt, then token 1 (after the prefill), ..., token n
        return clock.times[1] - t0, clock.times[-1] - clock.times[1]

    def ours(fused: bool):
        def run():
            t0 = time.perf_counter()
            ds, st, _ = gen.start(arrays, max_new_tokens=n, stop_tokens=())
            np.asarray(ds.last)  # the first token is on the host
            t1 = time.perf_counter()
            if fused:
                ds = gen.decode(ds, st, n)
                np.asarray(ds.tokens)
            else:  # what `stream` does: one compiled step and one host read per token
                for _ in range(n - 1):
                    ds = gen.step(ds, st)
                    np.asarray(ds.last)
            return t1 - t0, time.perf_counter() - t1

        return run

    # torch's OpenMP threads suffer badly from oversubscription on a shared CPU: transformers
    # runs with its best thread count (1 or torch's default), picked by a probe run of each.
    probe = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        hf_run()
        probe[threads] = sum(hf_run())
    best = min(probe, key=probe.get)
    torch.set_num_threads(best)
    res = interleaved_medians(
        {"hf": hf_run, "fused": ours(fused=True), "step": ours(fused=False)}, reps
    )
    (hf_prefill, hf_decode), (our_prefill, our_decode) = res["hf"], res["fused"]
    step_decode = res["step"][1]

    mine = gen.generate(arrays, max_new_tokens=n, stop_tokens=()).tokens
    agree = int((hf_tokens[0] == mine).all(0).cumprod().sum())
    tps = lambda seconds: b * (n - 1) / seconds
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"model: preset {FLAGS.preset}, {n_params / 1e6:.1f}M parameters, float32; prompt "
        f"{b} x {length} tokens ({int(np.prod(grid))} image patches per row); "
        f"{n} new tokens; median of {reps}"
    )
    print(f"greedy tokens equal to transformers for the first {agree} of {n} steps")
    print(f"{'':24}{'prefill ms':>12}{'decode tok/s':>14}")
    print(f"{f'transformers ({best} thr)':24}{hf_prefill * 1e3:12.1f}{tps(hf_decode):14.1f}")
    print(f"{'ours (fused loop)':24}{our_prefill * 1e3:12.1f}{tps(our_decode):14.1f}")
    print(f"{'ours (stepwise stream)':24}{'':12}{tps(step_decode):14.1f}")
    print(
        f"ratio ours / transformers: prefill {hf_prefill / our_prefill:.2f}x faster; decode "
        f"{hf_decode / our_decode:.2f}x (fused loop), {hf_decode / step_decode:.2f}x (stepwise)"
    )


if __name__ == "__main__":
    app.run(main)
