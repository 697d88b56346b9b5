"""Progress lines for conversions, and peak-memory measurement of a child process.

`Progress` prints `label: 12/434 tensors  1.23/3.45 GB  215.3 MB/s  eta 0:00:12` to stderr:
redrawn in place on a terminal, otherwise a line every `every` seconds plus a final line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Counts tensors and bytes done; `update(tensors, nbytes)`, then `close()`."""

    def __init__(
        self,
        label: str,
        total_tensors: int,
        total_bytes: int,
        *,
        enabled=True,
        every: float = 5.0,
        stream=None,
    ):
        self.label, self.total_tensors, self.total_bytes = label, total_tensors, total_bytes
        self.tensors = self.nbytes = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.2 if self.tty else every
        self.start = self._last = time.monotonic()

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.nbytes / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate
        eta = (self.total_bytes - self.nbytes) / rate if rate > 0 else 0.0
        return (
            f"{self.label}: {self.tensors}/{self.total_tensors} tensors  "
            f"{self.nbytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB  "
            f"{rate / 1e6:.1f} MB/s  eta {_hms(eta)}"
        )

    def update(self, tensors: int, nbytes: int) -> None:
        self.tensors += tensors
        self.nbytes += nbytes
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.start
            self._emit(final=True)
            self.stream.write(f"{self.label}: done in {_hms(elapsed)}\n")
            self.stream.flush()


_MEASURE = """
import json, resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"returncode": p.returncode, "wall_s": wall, "peak_rss": rss}))
"""


def run_measured(cmd: list[str], *, env=None, timeout=None) -> dict:
    """Runs `cmd` under a fresh parent; returns returncode, wall_s, peak_rss (bytes) and the
    child's stderr. A fresh parent makes `RUSAGE_CHILDREN` the peak of this child alone."""
    p = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd],
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines:
        raise RuntimeError(f"measuring {cmd} failed: {p.stderr[-2000:]}")
    out = json.loads(lines[-1])
    out["stderr"] = p.stderr
    return out
