"""Outputs are written whole or not at all (`qwen25vl_jax.atomic_write`)."""

from __future__ import annotations

import numpy as np
import pytest

from qwen25vl_jax.atomic_write import atomic_path, atomic_write_text
from qwen25vl_jax.cli_errors import write_npz


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.png"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_successful_writes_replace_the_target(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    write_npz(str(tmp_path / "b.npz"), x=np.arange(3))
    assert (tmp_path / "a.json").read_text() == "{}"
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]
