"""Command-line tools beyond bad input: the global batch is checked against the process count,
a converter killed mid-write leaves nothing that loads, and the float32-comparing tools default to
full-precision matmuls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from qwen25vl_jax.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ModelConfig.tiny()


def test_global_batch_not_divisible_by_processes(monkeypatch):
    """Checked on every data source (a second process is simulated)."""
    import jax

    from experiments.configs import base
    from experiments.train import make_data
    from qwen25vl_jax.cli_errors import InputError

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for source in ("synthetic", "records"):
        c = base.get_config("tiny")
        c.data.source, c.data.paths, c.train.batch_size = source, "x.jsonl", 3
        with pytest.raises(InputError, match=r"batch_size=3 is not divisible by the 2 processes"):
            make_data(c, TINY)


@pytest.mark.parametrize("converter", ["hf_to_orbax", "orbax_to_hf"])
def test_converter_killed_mid_write_leaves_nothing_that_loads(tmp_path, converter):
    """SIGKILL while the converter writes: no output directory, the half-written temporary
    does not load, and the rerun succeeds (and removes the dead run's temporary)."""
    from checkpoints_convert import hf_to_orbax
    from qwen25vl_jax.checkpoint import load_checkpoint
    from qwen25vl_jax.hf_weights import load_hf
    from tests.test_convert import random_release

    src, out = random_release(tmp_path / "src"), tmp_path / "out"
    if converter == "hf_to_orbax":  # slowed after its first parameter is written
        args, writer, load = (
            [f"--hf_dir={src}", f"--output_dir={out}"],
            "_write_rule",
            load_checkpoint,
        )
    else:  # slowed after its first safetensors file is written
        hf_to_orbax.convert(src, tmp_path / "ck", progress=False)
        args = [f"--checkpoint={tmp_path / 'ck'}", f"--output_dir={out}", "--max_shard_size=60KB"]
        writer, load = "write_safetensors", load_hf
    marker = tmp_path / "writing"
    slow = (
        f"import sys, time; sys.argv[1:] = {args!r}\n"
        f"from checkpoints_convert import {converter} as c\n"
        f"real = c.{writer}\n"
        "def slow(*a, **k):\n"
        f"    real(*a, **k); open('{marker}', 'w').close(); time.sleep(60)\n"
        f"c.{writer} = slow\n"
        "from absl import app\n"
        "c._define_flags(); app.run(c.main)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", slow], cwd=ROOT,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))  # fmt: skip
    try:
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the converter never started writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".out.tmp-")]
    assert leftovers and not out.exists()  # killed mid-write: only the hidden temporary
    with pytest.raises((FileNotFoundError, ValueError)):
        load(tmp_path / leftovers[0])  # and it does not load either
    rerun = subprocess.run([sys.executable, "-m", f"checkpoints_convert.{converter}", *args],
                           cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert load(out)[1] is not None
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.tmp-")]


@pytest.mark.parametrize(
    "module, setup, default",
    [("experiments.score", "", "highest"), ("experiments.generate", "", "highest"),
     ("experiments.eval", "m.define_flags()", "highest"), ("experiments.train", "", "default")],
)  # fmt: skip
def test_matmul_precision_defaults(module, setup, default):
    """The tools that compare with float32 references default to full float32 matmuls (GPUs
    and TPUs default to less); training keeps the platform's default (BUILD_NOTES §5)."""
    code = (f"import importlib; m = importlib.import_module('{module}'); {setup or 'pass'}\n"
            "from absl import flags; flags.FLAGS(['x'])\n"
            "print(flags.FLAGS.matmul_precision)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == default


def test_set_matmul_precision():
    import jax

    from qwen25vl_jax.precision import set_matmul_precision

    before = jax.config.jax_default_matmul_precision
    try:
        set_matmul_precision("high")
        assert jax.config.jax_default_matmul_precision == "high"
        with pytest.raises(ValueError, match="matmul precision 'fast'"):
            set_matmul_precision("fast")
    finally:
        jax.config.update("jax_default_matmul_precision", before)
