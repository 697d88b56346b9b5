"""Running code on N fake CPU devices in a subprocess (XLA_FLAGS must precede jax's import)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(args: list[str], devices: int = 8, timeout: int = 600) -> str:
    """stdout of `python *args` run from the repository root on `devices` fake CPU devices
    (optimisation level 0: these tiny programs compile twice as fast); fails the test with the
    output's tail when it exits non-zero."""
    # a loaded 2-core machine can keep a fake device from a collective for > 40 s (XLA's
    # default before it aborts the process)
    flags = (
        f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
        "--xla_cpu_collective_call_terminate_timeout_seconds=600"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=flags)
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def run_module(module: str, *args: str, devices: int = 8, timeout: int = 600) -> str:
    """stdout of `python -m module *args` on `devices` fake CPU devices (see `run_python`)."""
    return run_python(["-m", module, *args], devices, timeout)


def result_lines(script: str, devices: int = 8, timeout: int = 600) -> list[str]:
    """The lines `script` printed that start with 'RESULT ' (that prefix cut)."""
    out = run_python(["-c", script], devices, timeout)
    return [x[7:] for x in out.splitlines() if x.startswith("RESULT ")]
