"""Memory plan: per-device bytes of the real training step of each released size, compiled (not
run) for a mesh of N fake CPU devices, and the remat policy / mesh shape that fit a budget.

The step is `Trainer`'s own jit (train/step.py, its in/out shardings, the state donated),
lowered on `Trainer.abstract_state()` (ShapeDtypeStructs with shardings: no weight is ever
allocated) and an abstract `Batch` of rows_per_shard x (data x fsdp) rows, then
`.compile().memory_analysis()`. Per device:
  params, opt_state  the float32 master weights and Adam moments: the shard shapes of the
                     state's shardings (exact, what the compiled step takes as arguments);
  grads              float32 gradients of the trained weights, sharded as them (these live in
                     XLA's temporaries; shown for the breakdown, not added again);
  temp               XLA's temporary buffers (gradients, activations kept for the backward
                     pass, gathered weights, the loss's logits chunk, attention);
  peak               arguments + outputs not aliased to arguments + temp.
Attention is compiled with `--backend` (default splash: Pallas interpret mode on the CPU, no
[T, S] buffer, standing in for the TPU splash and GPU flash kernels alike).

Depth: the decoder is a `lax.scan` over stacked layers, so every layer holds the same bytes.
`--method=depth` compiles the decoder at two depths d1 < d2 and extrapolates temp linearly to
the full depth (params / opt_state are exact from the full model's abstract state); `full`
compiles the full depth. `--verify` compiles both for one size and prints the error.

What CPU compilation can and cannot say: buffer sizes, shardings and the SPMD partitioner are
XLA's own, but buffer assignment and fusion are the CPU backend's, not TPU's or GPU's (no
TPU-style memory-driven rematerialisation or latency-hiding scheduler): read the figures as
estimates of the device's, good to ~10-20%.

Usage (machine: see BUILD_NOTES "Memory plan"):
  python benchmarks/memory_plan.py --sizes=7b,72b --seq_lens=8192,32768 --devices=8,64,256
  python benchmarks/memory_plan.py --sizes=7b --seq_lens=8192 --devices=8 --verify
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # fake devices must be asked for before jax is imported
    _most = max(
        (int(n) for a in sys.argv if a.startswith("--devices=") for n in a[10:].split(",")),
        default=256,
    )
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_most}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qwen25vl_jax.config import ModelConfig  # noqa: E402
from qwen25vl_jax.model.inputs import Batch  # noqa: E402
from qwen25vl_jax.model.options import RunOptions  # noqa: E402
from qwen25vl_jax.sharding import MESH_AXES, make_mesh  # noqa: E402
from qwen25vl_jax.train.optimizer import OptimConfig  # noqa: E402
from qwen25vl_jax.train.trainer import StepConfig, Trainer  # noqa: E402

GB = 1e9
BUDGETS = {"TPU v5p (95 GB)": 95 * GB, "H100 (80 GB)": 80 * GB}
REMATS = ("dots", "full")  # least recompute first


@dataclasses.dataclass(frozen=True)
class Setup:
    """One compiled step: model size, text length L, ViT slots N per row, mesh axis sizes (the
    `sharding.MESH_AXES`; the product is the device count), remat policy, rows per batch shard,
    attention backend, overrides of the preset's fields."""

    size: str
    seq_len: int
    num_slots: int
    mesh: tuple[tuple[str, int], ...]
    remat: str
    rows_per_shard: int = 1
    backend: str = "splash"
    overrides: dict | None = None  # ModelConfig fields replaced (`ModelConfig.preset`)

    @property
    def devices(self) -> int:
        return int(np.prod([n for _, n in self.mesh]))

    def label(self) -> str:
        return " ".join(f"{a}={n}" for a, n in self.mesh if n > 1) or "1 device"


def abstract_batch(trainer: Trainer, rows: int, seq_len: int, num_slots: int) -> Batch:
    """ShapeDtypeStructs of a `Batch` (tokens int32[B, L], positions int32[3, B, L], patches
    float32[B, N, 1176], ...) with the trainer's batch shardings."""
    patch_dim = trainer.model_cfg.vision.patch_dim
    shapes = {
        "positions": ((3, rows, seq_len), jnp.int32),
        "patches": ((rows, num_slots, patch_dim), jnp.float32),
        "vit_positions": ((rows, num_slots, 2), jnp.int32),
        "vit_segment_ids": ((rows, num_slots), jnp.int32),
        "loss_mask": ((rows, seq_len), jnp.float32),
    }
    shardings = trainer.batch_shardings()
    fields = {f.name for f in dataclasses.fields(shardings)}
    return type(shardings)(
        **{
            name: jax.ShapeDtypeStruct(
                *shapes.get(name, ((rows, seq_len), jnp.int32)),
                sharding=getattr(shardings, name),
            )
            for name in fields
        }
    )


def shard_bytes(tree) -> int:
    """Bytes of one device's shard of every leaf (ShapeDtypeStructs with shardings)."""
    return sum(
        int(np.prod(a.sharding.shard_shape(a.shape))) * jnp.dtype(a.dtype).itemsize
        for a in jax.tree.leaves(tree)
    )


def _trainer(setup: Setup, num_layers: int | None) -> Trainer:
    overrides = dict(setup.overrides or {})
    if num_layers:
        overrides["text"] = {**overrides.get("text", {}), "num_layers": num_layers}
    cfg = ModelConfig.preset(setup.size, overrides)
    mesh = make_mesh(**dict(setup.mesh), devices=jax.devices()[: setup.devices])
    opts = RunOptions(dtype="bfloat16", backend=setup.backend, remat=setup.remat)
    return Trainer(cfg, OptimConfig(), opts, mesh, step=StepConfig())


def state_bytes(setup: Setup) -> dict[str, float]:
    """Per-device bytes of params, opt_state, grads and one batch (exact, from the shardings
    of the full-depth model's abstract state; nothing compiled)."""
    trainer = _trainer(setup, None)
    s = trainer.abstract_state()
    rows = setup.rows_per_shard * trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]
    return {
        "params": shard_bytes((s.trainable, s.frozen)),
        "opt_state": shard_bytes(s.opt_state),
        "grads": shard_bytes(s.trainable),
        "batch": shard_bytes(abstract_batch(trainer, rows, setup.seq_len, setup.num_slots)),
    }


def compiled_bytes(setup: Setup, num_layers: int | None = None) -> dict[str, float]:
    """XLA's memory analysis of the compiled step (decoder depth `num_layers`, default the
    size's): argument / output / alias / temp bytes per device, and compile seconds."""
    trainer = _trainer(setup, num_layers)
    rows = setup.rows_per_shard * trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]
    t0 = time.perf_counter()
    compiled = trainer.lower(abstract_batch(trainer, rows, setup.seq_len, setup.num_slots))
    mem = compiled.compile().memory_analysis()
    return {
        "argument": mem.argument_size_in_bytes,
        "output": mem.output_size_in_bytes,
        "alias": mem.alias_size_in_bytes,
        "temp": mem.temp_size_in_bytes,
        "compile_s": time.perf_counter() - t0,
    }


def measure(setup: Setup, *, method: str = "full", depths: tuple[int, int] = (2, 4)) -> dict:
    """Per-device bytes of `setup`'s training step: the `state_bytes` breakdown, XLA's temp
    (full depth, or extrapolated linearly from two decoder depths when method == 'depth') and
    peak = params + opt_state + batch + temp (+ outputs not aliased)."""
    out = dict(state_bytes(setup), method=method)
    full_depth = ModelConfig.preset(setup.size, setup.overrides).text.num_layers
    if method == "full":
        c = compiled_bytes(setup)
        temp, extra, seconds = c["temp"], c["output"] - c["alias"], c["compile_s"]
    elif method == "depth":
        d1, d2 = depths
        a, b = compiled_bytes(setup, d1), compiled_bytes(setup, d2)
        per_layer = (b["temp"] - a["temp"]) / (d2 - d1)
        temp = a["temp"] + per_layer * (full_depth - d1)
        extra, seconds = b["output"] - b["alias"], a["compile_s"] + b["compile_s"]
        out["temp_per_layer"] = per_layer
    else:
        raise ValueError(f"method must be 'full' or 'depth', got {method!r}")
    out.update(temp=temp, compile_s=seconds)
    out["peak"] = out["params"] + out["opt_state"] + out["batch"] + temp + max(extra, 0)
    return out


def candidates(devices: int, seq_len: int) -> list[tuple[tuple[str, int], ...]]:
    """Mesh shapes to try, cheapest communication first: all devices on fsdp, then tensor 4 and
    8 (and, where the `context` axis exists, context 2 / 4 / 8 at long lengths)."""
    out = []
    tensors = [t for t in (1, 4, 8) if devices % t == 0]
    contexts = [c for c in (1, 2, 4, 8) if "context" in MESH_AXES and devices % c == 0]
    for context, tensor in itertools.product(contexts or [1], tensors):
        if context > 1 and seq_len < 16384:
            continue
        if devices % (context * tensor):
            continue
        sizes = {"data": 1, "fsdp": devices // (context * tensor), "tensor": tensor}
        if "context" in MESH_AXES:
            sizes["context"] = context
        out.append(tuple((a, sizes.get(a, 1)) for a in MESH_AXES))
    return sorted(out, key=lambda m: dict(m).get("context", 1) * dict(m)["tensor"])


def _fmt(b: float) -> str:
    return f"{b / GB:7.2f}"


def main(argv: list[str]) -> None:
    from absl import flags

    flags.DEFINE_list("sizes", ["7b", "72b"], "config.PRESETS names")
    flags.DEFINE_list("seq_lens", ["8192", "32768"], "text lengths L (ViT slots N = 2 L)")
    flags.DEFINE_list("devices", ["8", "64", "256"], "fake device counts")
    flags.DEFINE_enum("method", "full", ["full", "depth"], "full depth, or two depths + line")
    flags.DEFINE_list("depths", ["2", "4"], "the two decoder depths of --method=depth")
    flags.DEFINE_string("backend", "splash", "attention backend compiled")
    flags.DEFINE_list("remats", list(REMATS), "remat policies to try, in order")
    flags.DEFINE_list("meshes", [], "meshes to try instead of `candidates`: fsdp=64:context=4,...")
    flags.DEFINE_bool("verify", False, "compile full depth and two depths; print the error")
    flags.FLAGS(argv)
    f = flags.FLAGS
    depths = tuple(int(d) for d in f.depths)
    print("command:", " ".join(argv))
    print(f"jax {jax.__version__}, {jax.device_count()} fake {jax.default_backend()} devices")
    if f.verify:
        for size, seq_len, n in itertools.product(f.sizes, f.seq_lens, f.devices):
            L, n = int(seq_len), int(n)
            setup = Setup(size, L, 2 * L, candidates(n, L)[0], "full", backend=f.backend)
            full, line = measure(setup), measure(setup, method="depth", depths=depths)
            print(
                f"verify {size} L={L} {setup.label()}: temp full depth {_fmt(full['temp'])} GB "
                f"({full['compile_s']:.0f} s), from depths {depths} {_fmt(line['temp'])} GB "
                f"({line['compile_s']:.0f} s): error {line['temp'] / full['temp'] - 1:+.2%}"
            )
        return
    head = f"{'size  L      devices mesh':45s}remat  params  opt     grads   temp    peak GB  fits"
    print(f"method: {f.method}" + (f" (decoder depths {depths})" if f.method == "depth" else ""))
    print(head)
    for size, seq_len, n in itertools.product(f.sizes, f.seq_lens, f.devices):
        L, n = int(seq_len), int(n)
        fits = {}
        meshes = candidates(n, L)
        if f.meshes:
            asked = [dict(a.split("=") for a in m.split(":")) for m in f.meshes]
            meshes = [tuple((a, int(m.get(a, 1))) for a in MESH_AXES) for m in asked]
            meshes = [m for m in meshes if int(np.prod([k for _, k in m])) == n]
        for mesh, remat in itertools.product(meshes, f.remats):
            setup = Setup(size, L, 2 * L, mesh, remat, backend=f.backend)
            state = state_bytes(setup)
            if state["params"] + state["opt_state"] > max(BUDGETS.values()):
                r = dict(state, temp=float("nan"), peak=state["params"] + state["opt_state"])
            else:
                r = measure(setup, method=f.method, depths=depths)
            ok = [name for name, b in BUDGETS.items() if r["peak"] <= b]
            print(
                f"{size:5s} {L:6d} {n:7d} {setup.label():22s} {remat:6s}"
                f"{_fmt(r['params'])} {_fmt(r['opt_state'])} {_fmt(r['grads'])} "
                f"{_fmt(r['temp'])} {_fmt(r['peak'])}  {', '.join(ok) or 'neither'}",
                flush=True,
            )
            for name in ok:
                fits.setdefault(name, setup)
            if len(fits) == len(BUDGETS):
                break
        for name in BUDGETS:
            s = fits.get(name)
            choice = f"{s.label()}, remat {s.remat}" if s else "nothing tried fits"
            print(f"  -> {size} L={L} on {n} devices, {name}: {choice}", flush=True)


if __name__ == "__main__":
    main(sys.argv)
