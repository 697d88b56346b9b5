"""Host-side cost of the one assembler: a generation prompt batch (processor arrays -> samples ->
left-padded `PreparedBatch`) and a packed training batch (rows of samples -> `Batch`).

Run:  JAX_PLATFORMS=cpu .venv/bin/python benchmarks/assemble_bench.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.common import bench_config, median_seconds  # noqa: E402
from qwen25vl_jax.config import ModelConfig  # noqa: E402
from qwen25vl_jax.data.assemble import assemble  # noqa: E402
from qwen25vl_jax.data.hf_format import samples_from_hf  # noqa: E402
from qwen25vl_jax.inference.generate import prepare_batch  # noqa: E402
from qwen25vl_jax.train.synthetic import random_sample  # noqa: E402
from tests.cases import make_case  # noqa: E402


def median_ms(fn, repeats: int = 30) -> float:
    return median_seconds(fn, repeats) * 1e3


def main() -> None:
    cfg = bench_config()
    for rows in (1, 8):  # generate_bench's prompt: 40 text, a 1120-patch image, 24 text
        arrays = make_case(cfg, [[40, ("image", (1, 28, 40)), 24]] * rows, seed=0)
        ms = median_ms(lambda a=arrays: prepare_batch(cfg, samples_from_hf(cfg, a)))
        print(f"generation prompt, {rows} row(s): processor arrays -> PreparedBatch {ms:.2f} ms")
    tiny = ModelConfig.tiny()
    rng = np.random.default_rng(0)
    packed = [[random_sample(tiny, rng, 128, 200) for _ in range(2)] for _ in range(8)]
    ms = median_ms(lambda: assemble(packed, tiny, seq_len=256, num_slots=1024))
    print(f"training batch, 8 rows x 256 tokens x 1024 ViT slots (2 samples a row): {ms:.2f} ms")


if __name__ == "__main__":
    main()
