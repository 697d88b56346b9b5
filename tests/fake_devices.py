"""Running a script on N fake CPU devices in a subprocess (XLA_FLAGS must precede jax's import)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def result_lines(script: str, devices: int = 8, timeout: int = 600) -> list[str]:
    """The lines `script` printed that start with 'RESULT ' (that prefix cut); fails the test
    with the script's stderr when it exits non-zero."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=flags)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [x[7:] for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
