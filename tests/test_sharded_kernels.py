"""Attention kernels on a mesh run per shard (jax.shard_map): equal to one device, and no row or
head of q / k / v is gathered onto another device around the kernel call. On 8 fake CPU devices
in a subprocess (XLA_FLAGS must precede jax's import); kernels in Pallas interpret mode."""

from tests.fake_devices import result_lines

SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from qwen25vl_jax.model.attention import attention
from qwen25vl_jax.sharding import make_mesh

rng = np.random.default_rng(0)
b, t, n, kh, h = 4, 256, 4, 2, 16
q = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32)
k, v = (jnp.asarray(rng.standard_normal((b, t, kh, h)), jnp.float32) for _ in range(2))
seg = jnp.asarray(np.repeat([[1] * 100 + [2] * 120 + [0] * 36], b, 0), jnp.int32)
ref = attention(q, k, v, q_segments=seg, kv_segments=seg, causal=True, scale=0.25)
mesh = make_mesh(data=2, fsdp=2, tensor=2)
rows, segs = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")), NamedSharding(
    mesh, P(("data", "fsdp")))
args = [jax.device_put(x, s) for x, s in ((q, rows), (k, rows), (v, rows), (seg, segs))]
for backend in ("splash", "pallas_gpu"):
    f = jax.jit(lambda q, k, v, s: attention(q, k, v, q_segments=s, kv_segments=s, causal=True,
                                             scale=0.25, backend=backend))
    with jax.set_mesh(mesh):
        out = f(*args)
        hlo = f.lower(*args).compile().as_text()
    real = np.asarray(seg) > 0
    err = float(np.abs(np.asarray(out) - np.asarray(ref))[real].max())
    print(f"RESULT {backend} {err} {hlo.count('all-gather')}")
"""


def test_kernels_on_a_mesh_run_per_shard():
    results = [x.split() for x in result_lines(SCRIPT)]
    assert [r[0] for r in results] == ["splash", "pallas_gpu"]
    for backend, err, gathers in results:
        assert float(err) < 2e-5, (backend, err)
        assert int(gathers) == 0, f"{backend}: {gathers} all-gathers around the kernel"
