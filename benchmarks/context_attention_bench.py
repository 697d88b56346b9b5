"""Ring vs all-gather context attention on fake CPU devices: forward + backward time of one
`attention` call (the tiny model's heads) over a row of L tokens split over `context` devices.

Usage (XLA_FLAGS is set here, before jax's import):
  python benchmarks/context_attention_bench.py --length=8192 --context=4 --sample=8192
--sample: tokens per packed sample (L = one sample: plain causal; smaller: packed row).
Prints the median of --reps timed calls per implementation (after one compile call).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600"
)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from qwen25vl_jax.model.attention import attention  # noqa: E402
from qwen25vl_jax.sharding import make_mesh  # noqa: E402

flags.DEFINE_integer("length", 8192, "tokens per row")
flags.DEFINE_integer("context", 4, "devices along the context axis")
flags.DEFINE_integer("sample", 0, "tokens per packed sample (0: the whole row is one)")
flags.DEFINE_integer("reps", 3, "timed calls per implementation")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    length, c = FLAGS.length, FLAGS.context
    sample = FLAGS.sample or length
    n, kh, h = 6, 2, 8  # the tiny decoder's heads
    rng = np.random.default_rng(0)
    q, k, v = (
        jnp.asarray(rng.standard_normal((1, length, m, h)), jnp.float32) for m in (n, kh, kh)
    )
    seg = jnp.asarray(1 + np.arange(length)[None] // sample, jnp.int32)

    def loss(q, k, v, impl):
        out = attention(q, k, v, q_segments=seg, kv_segments=seg, causal=True, scale=0.35,
                        context=impl)  # fmt: skip
        return (out * out).sum()

    mesh = make_mesh(1, 1, 1, jax.devices()[:c], context=c)
    for impl in ("ring", "all_gather"):
        with jax.set_mesh(mesh):
            fn = jax.jit(
                jax.grad(lambda q, k, v, impl=impl: loss(q, k, v, impl), argnums=(0, 1, 2))
            )
            jax.block_until_ready(fn(q, k, v))
            times = []
            for _ in range(FLAGS.reps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(q, k, v))
                times.append(time.perf_counter() - t0)
        print(f"L={length} context={c} sample={sample} {impl}: fwd+bwd median "
              f"{np.median(times):.2f}s ({', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
