"""End-to-end training runs of `experiments.train` in subprocesses (float32 compute):
1 device vs 8 fake devices, two processes vs one, and SIGKILL-then-resume vs uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
COMMON = [
    "--config=experiments/configs/stage2_full.py:tiny", "--config.run.dtype=float32",
    f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.batch_size=4",
    "--config.optim.warmup_steps=2", "--config.data.source=synthetic",
]  # fmt: skip

pytestmark = pytest.mark.heavy


def env(devices: int = 1) -> dict:
    # optimisation level 0 halves XLA's compile time of these tiny steps; every run compared
    # here compiles with the same flags
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)


def command(workdir, *extra):
    return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *COMMON, *extra]


def run(workdir, *extra, devices=1):
    proc = subprocess.run(command(workdir, *extra), cwd=ROOT, env=env(devices),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return losses(workdir)


def losses(workdir) -> dict[int, float]:
    """step -> loss from metrics.jsonl (later lines win: a resumed run re-logs its steps)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            out[m["step"]] = m["loss"]
    return out


def assert_close(a: dict, b: dict, steps, rel: float):
    for s in steps:
        assert abs(a[s] - b[s]) <= rel * abs(b[s]), (s, a[s], b[s])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process, single-device run."""
    return run(tmp_path_factory.mktemp("reference"), "--config.train.save_every=100")


def test_eight_devices_equal_one(reference, tmp_path):
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    eight = run(tmp_path, "--config.train.save_every=100", *mesh, devices=8)
    assert_close(eight, reference, range(1, 5), 1e-5)


def test_two_processes_equal_one(reference, tmp_path):
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
    assert_close(losses(tmp_path), reference, range(1, 5), 1e-5)


def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path):
    proc = subprocess.Popen(command(tmp_path, "--config.train.save_every=1"), cwd=ROOT,
                            env=env(1), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    deadline = time.time() + 900
    for line in proc.stdout:
        if line.startswith("[train] step 3:") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(tmp_path)) == 3  # killed before finishing
    resumed = run(tmp_path, "--config.train.save_every=1")
    assert max(resumed) == STEPS
    assert_close(resumed, reference, range(4, STEPS + 1), 1e-6)
