"""Input-pipeline throughput (samples/s with N preprocessing workers) and packing efficiency
(real text tokens / L, real patches / P) on a synthetic corpus with a realistic spread: images
224-1344 px a side (JPEG), 1-4 per sample, text 20-2000 tokens, processor-default pixel budget,
the released ViT geometry (window 112 px).

Two efficiency figures: the pipeline's own counters over the whole run (the last window is
flushed, its tail bins only partly full), and the packing planner alone (`plan_window` on the
sizes of `--plan_samples` synthetic samples, no pixels), the steady-state figure. And the
data-parallel balance of the planner's batches over `--shards` shards (max / mean shard cost,
analytic FLOPs), packed as before (by fill only) and balanced (`data/row_balance.py`).

Usage: python benchmarks/pipeline_bench.py [--samples=96] [--epochs=2] [--workers=0,2]
    [--seq_len=8192] [--num_slots=32768] [--lookahead=32] [--batch_size=1] [--shards=8]
    [--rows_per_shard=1] [--cache_mb=0]

With --cache_mb each worker count runs again with `PipelineConfig.sample_cache_mb`: the epochs
after the first come from the workers' memory; the line prints the speed-up over the uncached
run of the same worker count.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qwen25vl_jax.config import ModelConfig  # noqa: E402
from qwen25vl_jax.data.layout import layout_slots  # noqa: E402
from qwen25vl_jax.data.packing import Bucket  # noqa: E402
from qwen25vl_jax.data.pipeline import PipelineConfig, make_train_iterator  # noqa: E402
from qwen25vl_jax.data.pipeline_counts import efficiency  # noqa: E402
from qwen25vl_jax.data.records import RecordOptions, record_to_sample  # noqa: E402
from qwen25vl_jax.data.row_balance import sample_flops, shard_imbalance  # noqa: E402
from qwen25vl_jax.data.tokenizer import build_qwen_tokenizer  # noqa: E402
from qwen25vl_jax.data.vision import smart_resize  # noqa: E402
from qwen25vl_jax.data.window_plan import plan_window  # noqa: E402

flags.DEFINE_integer("samples", 96, "distinct records in the synthetic corpus")
flags.DEFINE_integer("epochs", 2, "passes over the corpus (reshuffled)")
flags.DEFINE_integer("images", 40, "distinct image files the records draw from")
flags.DEFINE_list("workers", ["0", "2"], "preprocessing worker counts to time")
flags.DEFINE_integer("seq_len", 8192, "text budget L")
flags.DEFINE_integer("num_slots", 32768, "ViT patch-slot budget P (multiple of 64)")
flags.DEFINE_integer("lookahead", 32, "new samples per packing window")
flags.DEFINE_integer("batch_size", 1, "packed examples per batch")
flags.DEFINE_integer("worker_buffer", 0, "samples buffered per worker (0: the pipeline default)")
flags.DEFINE_integer("plan_samples", 5000, "synthetic sample sizes for the planner-only figure")
flags.DEFINE_integer("shards", 8, "data-parallel shards for the balance figure")
flags.DEFINE_integer("rows_per_shard", 1, "packed rows per shard in the balance figure's batch")
flags.DEFINE_integer("cost_samples", 30, "records timed through record_to_sample alone")
flags.DEFINE_integer("seed", 0, "corpus seed")
flags.DEFINE_integer(
    "cache_mb", 0, "also time each worker count with this sample_cache_mb (0: not)"
)
FLAGS = flags.FLAGS

_TEXT = (
    "the a of to and in is it that for on with as was at by this be from or have an are image "
    "picture cat dog left right red blue green small large person car tree sky road building "
    "window table chair bottle cup book phone screen light shadow water river mountain cloud "
    "street sign text number count colour position between behind above below near far "
    "describe explain answer question because therefore however"
)
WORDS = tuple(_TEXT.split())


def synthetic_image(rng, h: int, w: int) -> Image.Image:
    """Smooth colour gradients plus noise: JPEG-compressible like a photo, not a flat field."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            np.sin(x / rng.uniform(20, 200) + rng.uniform(0, 6)),
            np.cos(y / rng.uniform(20, 200) + rng.uniform(0, 6)),
            np.sin((x + y) / rng.uniform(20, 200)),
        ],
        -1,
    )
    noise = rng.normal(0, 0.15, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip((base + noise + 1) * 127.5, 0, 255).astype(np.uint8))


def text_of_tokens(rng, tok, n: int) -> str:
    """Random words totalling about n tokens (trimmed with the real tokenizer)."""
    words = list(rng.choice(WORDS, size=n + 8))
    ids = tok.encode(" ".join(words), add_special_tokens=False).ids[:n]
    return tok.decode(ids)


def make_corpus(root: str, tok, rng) -> str:
    sizes = []
    for k in range(FLAGS.images):
        h, w = (int(v) for v in rng.integers(224, 1345, 2))
        synthetic_image(rng, h, w).save(os.path.join(root, f"im{k}.jpg"), quality=90)
        sizes.append((h, w))
    path = os.path.join(root, "corpus.jsonl")
    with open(path, "w") as f:
        for _ in range(FLAGS.samples):
            k = int(rng.integers(1, 5))
            n_text = int(rng.integers(20, 2001))
            n_question = max(1, int(n_text * rng.uniform(0.05, 0.3)))
            record = {
                "messages": [
                    {
                        "role": "user",
                        "content": "<image>" * k + text_of_tokens(rng, tok, n_question),
                    },
                    {"role": "assistant", "content": text_of_tokens(rng, tok, n_text - n_question)},
                ],
                "images": [f"im{int(i)}.jpg" for i in rng.integers(0, FLAGS.images, k)],
            }
            f.write(json.dumps(record) + "\n")
    return path


def run_pipeline(conf: PipelineConfig, cfg: ModelConfig, tok) -> dict:
    t0 = time.perf_counter()
    it = make_train_iterator(conf, cfg, tokenizer=tok, process_index=0, process_count=1)
    first = None
    n_batches = 0
    for _ in it:
        n_batches += 1
        if first is None:
            first = (time.perf_counter(), it.counts["samples"])
    t1 = time.perf_counter()
    counts = it.counts
    steady = (counts["samples"] - first[1]) / max(t1 - first[0], 1e-9)
    return {
        "counts": counts,
        "seconds": t1 - t0,
        "samples_per_s": counts["samples"] / (t1 - t0),
        "steady_samples_per_s": steady,
        "batches": n_batches,
    }


def planner_sizes(cfg: ModelConfig, bucket: Bucket, rng) -> tuple[list, list]:
    """(tokens, ViT slots) and analytic cost of `--plan_samples` synthetic samples drawn from
    the corpus's distribution (no pixels)."""
    sizes, costs = [], []
    for _ in range(FLAGS.plan_samples):
        k = int(rng.integers(1, 5))
        tokens, grids = int(rng.integers(20, 2001)) + 22 + 2 * k, []  # + chat template tokens
        for _ in range(k):
            h, w = smart_resize(*(int(v) for v in rng.integers(224, 1345, 2)))
            grids.append((1, h // 14, w // 14))
            tokens += h * w // 784
        size = (tokens, layout_slots(grids, cfg.vision))
        if bucket.fits(*size):
            sizes.append(size)
            costs.append(sample_flops(cfg, tokens, grids))
    return sizes, costs


def planner_efficiency(sizes, costs, bucket: Bucket, batch_size: int, balance: bool) -> dict:
    """plan_window over a stream of sample sizes as the pipeline runs it; packing fill, and the
    data-parallel balance over `--shards` shards (the batch's rows split evenly over them):
    sum over batches of the costliest shard / sum of the mean shard (the step time against a
    perfectly balanced one), and the worst batch's max / mean. Full batches only (the last
    flushed batch may be short)."""
    real = patches = cap = 0
    worst, sum_max, sum_mean = 1.0, 0.0, 0.0
    carry, ages, pos, k = [], {}, 0, FLAGS.lookahead
    t0 = time.perf_counter()
    while pos < len(sizes) or carry:
        window = carry + list(range(pos, min(pos + k, len(sizes))))
        pos += k
        batches, kept = plan_window(
            [sizes[i] for i in window],
            [bucket],
            batch_size,
            min_fill=0.97,
            max_carry=k,
            forced=[j for j, i in enumerate(window) if ages.get(i, 0) >= 4],
            final=pos >= len(sizes),
            costs=[costs[i] for i in window] if balance else None,
        )
        for _, bins in batches:
            real += sum(sizes[window[j]][0] for b in bins for j in b)
            patches += sum(sizes[window[j]][1] for b in bins for j in b)
            cap += batch_size
            if len(bins) == batch_size:
                rows = [sum(costs[window[j]] for j in b) for b in bins]
                most, mean = shard_imbalance(rows, FLAGS.shards)
                sum_max, sum_mean, worst = sum_max + most, sum_mean + mean, max(worst, most / mean)
        carry = [window[j] for j in kept]
        ages = {i: ages.get(i, 0) + 1 for i in carry}
    return {
        "samples": len(sizes),
        "text": real / (cap * bucket.seq_len),
        "slots": patches / (cap * bucket.num_slots),
        "imbalance": sum_max / max(sum_mean, 1e-30),
        "worst": worst,
        "seconds": time.perf_counter() - t0,
    }


def main(argv):
    del argv
    cfg = ModelConfig.qwen25vl_7b()
    tok = build_qwen_tokenizer()
    bucket = Bucket(FLAGS.seq_len, FLAGS.num_slots)
    rng = np.random.default_rng(FLAGS.seed)
    print("command:", " ".join(sys.argv))
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        path = make_corpus(root, tok, rng)
        print(
            f"corpus: {FLAGS.samples} records, {FLAGS.images} JPEGs, "
            f"{time.perf_counter() - t0:.1f} s to write"
        )
        # per-sample cost of the worker side alone (decode, resize, patchify, tokenize, indices)
        opts = RecordOptions(media_root=root)
        with open(path, "rb") as f:
            lines = f.read().splitlines()[: FLAGS.cost_samples]
        t0 = time.perf_counter()
        for i, line in enumerate(lines):
            record_to_sample(line, f"corpus:{i + 1}", cfg=cfg, tokenizer=tok, options=opts)
        per_sample = (time.perf_counter() - t0) / max(len(lines), 1)
        print(
            f"preprocessing alone: {1000 * per_sample:.0f} ms/sample "
            f"({1 / per_sample:.2f} samples/s per worker core)"
        )
        runs = [(int(w), 0) for w in FLAGS.workers if w]
        if FLAGS.cache_mb:
            runs = [(w, mb) for w, _ in runs for mb in (0, FLAGS.cache_mb)]
        uncached = {}
        for workers, cache_mb in runs:
            conf = PipelineConfig(
                paths=(path,),
                media_root=root,
                buckets=(bucket,),
                batch_size=FLAGS.batch_size,
                num_epochs=FLAGS.epochs,
                num_workers=workers,
                sample_cache_mb=cache_mb,
                lookahead=FLAGS.lookahead,
                on_bad_record="skip",
                seed=FLAGS.seed,
                **({"worker_buffer_size": FLAGS.worker_buffer} if FLAGS.worker_buffer else {}),
            )
            r = run_pipeline(conf, cfg, tok)
            c, eff = r["counts"], efficiency(r["counts"])
            if cache_mb:
                print(
                    f"workers={workers}, sample_cache_mb={cache_mb}: {r['seconds']:.1f} s, "
                    f"{uncached[workers] / r['seconds']:.2f}x the uncached run over "
                    f"{FLAGS.epochs} epochs"
                )
                continue
            uncached[workers] = r["seconds"]
            print(
                f"workers={workers}: {c['samples']} samples in {r['batches']} batches, "
                f"{r['seconds']:.1f} s -> {r['samples_per_s']:.2f} samples/s "
                f"(after the first batch {r['steady_samples_per_s']:.2f} samples/s); packing "
                f"text {eff['text']:.4f}, patches {eff['patches']:.4f} of P={FLAGS.num_slots}; "
                f"mean {c['real_tokens'] / c['samples']:.0f} tokens/sample; "
                f"truncated {c['truncated']}, skipped {sum(c['skipped'].values())}, "
                f"padding examples {c['padding_examples']}"
            )
            if workers == 0:  # in-process run = preprocessing + the serial main-process part
                main_side = r["seconds"] / c["samples"] - per_sample
                print(
                    f"  packing + batching in the main process: {1000 * main_side:.0f} "
                    f"ms/sample (the serial part)"
                )
    sizes, costs = planner_sizes(cfg, bucket, np.random.default_rng(FLAGS.seed + 1))
    plan = planner_efficiency(sizes, costs, bucket, FLAGS.batch_size, balance=False)
    print(
        f"planner only ({plan['samples']} sample sizes, L={FLAGS.seq_len}, P={FLAGS.num_slots}, "
        f"lookahead={FLAGS.lookahead}, batch={FLAGS.batch_size}): text {plan['text']:.4f}, "
        f"ViT slots {plan['slots']:.4f}"
    )
    batch = FLAGS.shards * FLAGS.rows_per_shard
    for balance in (False, True):
        p = planner_efficiency(sizes, costs, bucket, batch, balance=balance)
        print(
            f"data-parallel balance, {'balanced (row_balance)' if balance else 'packed as today'}"
            f" (batch {batch} = {FLAGS.shards} shards x {FLAGS.rows_per_shard} rows, analytic "
            f"forward FLOPs of the 7B): max/mean shard cost {p['imbalance']:.3f} (worst batch "
            f"{p['worst']:.3f}); packing text {p['text']:.4f}, ViT slots {p['slots']:.4f}; "
            f"planner {p['seconds']:.2f} s"
        )


if __name__ == "__main__":
    app.run(main)
