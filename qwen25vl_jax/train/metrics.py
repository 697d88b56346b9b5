"""Training metrics: analytic FLOPs (ViT + merger + LLM, attention included), MFU, throughput,
TensorBoard event files and progress lines.

FLOPs are `model.cost.forward_flops` (MaxText's count of the LLM plus the ViT and merger, on the
*real* tokens and patches of the batch) x3 for forward + backward. A frozen module whose inputs
need no gradient runs forward only (x1); a frozen module with a trainable module upstream
back-propagates activations but not weights (x2).
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.cost import forward_flops
from qwen25vl_jax.train.optimizer import OptimConfig

# dense bf16 peak FLOP/s per device, by `device_kind` prefix
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
}


def peak_flops(device: jax.Device, override: float | None = None) -> float | None:
    if override:
        return override
    for prefix, flops in PEAK_FLOPS.items():
        if device.device_kind.startswith(prefix):
            return flops
    return None


def _factors(optim: OptimConfig) -> tuple[int, int, int]:
    """Multipliers (vit, merger, llm) of forward FLOPs for one training step."""
    vit = 3 if optim.train_vit else 1
    merger = 3 if optim.train_merger else (2 if optim.train_vit else 1)
    upstream = optim.train_vit or optim.train_merger
    llm = 3 if optim.train_llm else (2 if upstream else 1)
    return vit, merger, llm


def batch_flops(cfg: ModelConfig, batch, optim: OptimConfig) -> dict[str, float]:
    """Training FLOPs of one (host, NumPy) batch: {'vit', 'merger', 'llm', 'total'}."""
    vit_seg, seg = np.asarray(batch.vit_segment_ids), np.asarray(batch.segment_ids)
    square_sum = lambda ids: sum(float(np.square(np.bincount(r[r > 0])).sum()) for r in ids)  # noqa: E731
    fwd = forward_flops(
        cfg,
        patches=float((vit_seg > 0).sum()),
        frames_sq=square_sum(vit_seg),
        tokens=float((seg > 0).sum()),
        samples_sq=square_sum(seg),
    )
    fv, fm, fl = _factors(optim)
    out = {"vit": fv * fwd["vit"], "merger": fm * fwd["merger"], "llm": fl * fwd["llm"]}
    out["total"] = sum(out.values())
    return out


class Throughput:
    """Tokens/s (real and padded) and MFU between calls to `update`."""

    def __init__(self, num_devices: int, peak: float | None):
        self.num_devices, self.peak = num_devices, peak
        self.t0 = time.perf_counter()

    def update(self, flops: float, real_tokens: float, padded_tokens: float, steps: int = 1):
        now = time.perf_counter()
        dt, self.t0 = now - self.t0, now
        out = {
            "step_seconds": dt / steps,
            "real_tokens_per_s": real_tokens / dt,
            "padded_tokens_per_s": padded_tokens / dt,
            "tflops_per_device": flops / dt / self.num_devices / 1e12,
        }
        if self.peak:
            out["mfu"] = flops / dt / self.num_devices / self.peak
        return out


class MetricWriter:
    """TensorBoard scalars, a `metrics.jsonl` (full precision, machine-readable) and one
    progress line per call; process 0 only."""

    def __init__(self, logdir: str | None):
        self.writer = self.jsonl = None
        if logdir and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(logdir, "tensorboard"))
            self.jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")  # noqa: SIM115

    def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> str:
        scalars = {k: float(v) for k, v in scalars.items()}
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
            self.writer.flush()
            self.jsonl.write(json.dumps({"step": step, "split": prefix, **scalars}) + "\n")
            self.jsonl.flush()
        shown = (
            "loss",
            "lr",
            "grad_norm",
            "real_tokens_per_s",
            "mfu",
            "step_seconds",
            "skipped_records",
            "reward",  # RL (experiments/rl.py)
            "kl",
            "sample_seconds",
            "train_seconds",
        )
        parts = [f"{k} {scalars[k]:.4g}" for k in shown if k in scalars]
        line = f"[{prefix}] step {step}: " + ", ".join(parts)
        if jax.process_index() == 0:
            print(line, flush=True)
        return line

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()
