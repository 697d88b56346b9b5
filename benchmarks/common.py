"""Shared by the benchmarks: the benchmark model config, a median timer and a token clock."""

from __future__ import annotations

import statistics
import time

from qwen25vl_jax.config import ModelConfig


def bench_config() -> ModelConfig:
    """A small model with the release's structure: window 112, 8 ViT blocks, 4 decoder layers."""
    return ModelConfig.tiny(
        vision={
            "depth": 8,
            "hidden_size": 256,
            "intermediate_size": 684,
            "num_heads": 4,
            "window_size": 112,
            "fullatt_block_indexes": (3, 7),
        },
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        mrope_section=(8, 12, 12),
    )


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call (which also compiles)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_torch_seconds(fn, repeats: int) -> tuple[float, int]:
    """(median seconds, threads) of `fn` under the faster of 1 and 2 torch threads: on a
    shared 2-core machine torch's 2-thread kernels collapse when another process runs."""
    import torch

    before = torch.get_num_threads()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append((median_seconds(fn, repeats), threads))
    torch.set_num_threads(before)
    return min(results)


class StreamClock:
    """A transformers streamer that timestamps each `put` (the prompt, then every new token)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, _):
        self.times.append(time.perf_counter())

    def end(self):
        pass
