"""Writing a file so that readers never see it half-written: a temporary name in the same
directory, renamed onto the target only when the write succeeded (a killed or failed run leaves
the old file, or none, and no temporary)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on a clean exit it replaces ``path``, on an
    exception it is removed. Write the whole file to the yielded path inside the block."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    # created by the writer (so with the usual permissions), unique per process and call
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) written to ``path`` through `atomic_path`, flushed to disk first."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
