"""End-to-end training runs of `experiments.train` in subprocesses (float32 compute):
1 device vs 8 fake devices, two processes vs one, and SIGKILL-then-resume vs uninterrupted;
compared by loss, gradient norm and the weights after 6 updates at a non-zero learning rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest
from flax import nnx

from qwen25vl_jax.checkpoint import load_checkpoint
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.qwen25vl import Qwen25VL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
# Adam with eps 1 (>> sqrt of its second moment: gradients are clipped to norm 1) is ~SGD with
# momentum: its update is continuous in the gradient, so float noise between meshes cannot flip
# it the way Adam's early ~lr * sign(g) steps do; no warmup, so every step moves the weights
COMMON = [
    "--config=experiments/configs/stage2_full.py:tiny", "--config.run.dtype=float32",
    f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.batch_size=4",
    "--config.data.source=synthetic", "--config.optim.warmup_steps=0", "--config.optim.eps=1.0",
    "--config.optim.lr=0.3", "--config.optim.vit_lr=0.3",
]  # fmt: skip

pytestmark = pytest.mark.heavy


def env(devices: int = 1) -> dict:
    # optimisation level 0 halves XLA's compile time of these tiny steps; every run compared
    # here compiles with the same flags
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


def command(workdir, *extra):
    return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *COMMON, *extra]


def run(workdir, *extra, devices=1) -> str:
    """Runs a training process to the end; returns its stdout."""
    proc = subprocess.run(command(workdir, *extra), cwd=ROOT, env=env(devices),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def metrics(workdir) -> list[dict]:
    """The lines of metrics.jsonl, in the order written (a resumed run appends)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def by_step(lines: list[dict]) -> dict[int, dict]:
    out = {m["step"]: m for m in lines}
    assert len(out) == len(lines), "a step was logged twice"
    return out


def final_params(workdir) -> dict[str, np.ndarray]:
    model, _ = load_checkpoint(os.path.join(workdir, str(STEPS)))
    return {"/".join(map(str, k)): np.asarray(v.get_value())
            for k, v in nnx.to_flat_state(nnx.state(model))}  # fmt: skip


@pytest.fixture(scope="module")
def initial():
    """The random initial weights every run starts from (train.seed 0): the scale of what the
    updates moved."""
    model = Qwen25VL(ModelConfig.tiny(), rngs=nnx.Rngs(0))
    return {"/".join(map(str, k)): np.asarray(v.get_value())
            for k, v in nnx.to_flat_state(nnx.state(model))}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process, single-device run: metrics by step, final weights."""
    workdir = tmp_path_factory.mktemp("reference")
    run(workdir, "--config.train.save_every=100")
    return by_step(metrics(workdir)), final_params(workdir)


def assert_same_run(got, want, initial, steps, rel: float, params_rel: float):
    """Per step: loss and grad_norm (a function of every gradient) within `rel`; the final
    weights: what the 6 updates moved, leaf by leaf, within `params_rel` of the reference."""
    (got_m, got_p), (want_m, want_p) = got, want
    assert set(got_m) == set(steps), sorted(got_m)
    for s in steps:
        for name in ("loss", "grad_norm"):
            a, b = got_m[s][name], want_m[s][name]
            assert abs(a - b) <= rel * abs(b), (s, name, a, b)
        assert want_m[s]["lr"] > 0
    assert got_p.keys() == want_p.keys() == initial.keys()
    apart = {}
    for k in want_p:
        moved = np.linalg.norm(want_p[k] - initial[k])
        assert moved > 0, k  # every weight was updated
        apart[k] = float(np.linalg.norm(got_p[k] - want_p[k]) / moved)
    worst = max(apart, key=apart.get)
    print(f"weights apart by at most {apart[worst]:.2e} of what the updates moved ({worst})")
    assert apart[worst] <= params_rel, (worst, apart[worst])


def test_eight_devices_equal_one(reference, initial, tmp_path):
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    run(tmp_path, "--config.train.save_every=100", *mesh, devices=8)
    eight = by_step(metrics(tmp_path)), final_params(tmp_path)
    assert_same_run(eight, reference, initial, range(1, STEPS + 1), 1e-5, 1e-4)


def test_two_processes_equal_one(reference, initial, tmp_path):
    port = portpicker.pick_unused_port()
    dist = [f"--coordinator_address=localhost:{port}", "--num_processes=2",
            "--cpu_collectives=gloo", "--config.train.save_every=100"]  # fmt: skip
    procs = [
        subprocess.Popen(command(tmp_path, *dist, f"--process_id={i}"), cwd=ROOT, env=env(1),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-4000:]
    two = by_step(metrics(tmp_path)), final_params(tmp_path)
    assert_same_run(two, reference, initial, range(1, STEPS + 1), 1e-5, 1e-4)


# the context-parallel variant: each row's 128 tokens and 768 ViT slots split over 2 devices
# (ring attention); compared with the one-device reference, so at the cross-mesh tolerances
CONTEXT2 = ("--config.mesh.data=1", "--config.mesh.context=2")


@pytest.mark.parametrize("mesh", [(), CONTEXT2], ids=["one_device", "context2"])
def test_sigkill_then_resume_equals_uninterrupted(reference, initial, tmp_path, mesh):
    """Killed right after step 3 (checkpoints written synchronously, so step 3's is complete
    and step 4's cannot be), the second process must restore step 3 and the data iterator's
    position, train steps 4-6 only, and end where the uninterrupted run ends."""
    devices = 2 if mesh else 1
    rel, params_rel = (1e-5, 1e-4) if mesh else (1e-6, 1e-6)
    first = command(tmp_path, "--config.train.save_every=1", "--config.train.async_save=false",
                    *mesh)  # fmt: skip
    proc = subprocess.Popen(first, cwd=ROOT, env=env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    deadline = time.time() + 900
    for line in proc.stdout:
        if line.startswith("[train] step 3:") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3]  # killed before finishing

    out = run(tmp_path, "--config.train.save_every=1", *mesh, devices=devices)
    resumed = [line for line in out.splitlines() if "resumed" in line]
    assert resumed == ['[train] resumed from step 3, data {"step": 3}'], out[-2000:]
    lines = metrics(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]  # no step trained twice
    second = by_step(lines[3:]), final_params(tmp_path)
    assert_same_run(second, reference, initial, range(4, STEPS + 1), rel, params_rel)
