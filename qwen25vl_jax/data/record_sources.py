"""Random access to training records: JSONL and ArrayRecord files as one Grain data source.

Item i of a source is ``(record_id, payload bytes)``: the record id names the record in every
error (``file:line`` for JSONL, ``file#index`` for ArrayRecord); `records.record_to_sample`
turns the payload into a `Sample`.
"""

from __future__ import annotations

import bisect
import glob
import json
import mmap
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext

import numpy as np

from qwen25vl_jax.cli_errors import InputError


class JsonlSource:
    """Random access to the non-blank lines of a JSONL file: item i = ("path:line", bytes).

    The line index (int64 offsets) is built once by a NumPy scan; reads use ``os.pread`` on a
    descriptor opened lazily per process, so the source pickles into Grain workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else nullcontext(b"")
            with mapped as buf:
                data = np.frombuffer(buf, np.uint8)
                ends = np.flatnonzero(data == ord("\n"))
                if size and (not len(ends) or ends[-1] != size - 1):
                    ends = np.append(ends, size)  # last line without a newline
                starts = np.concatenate([[0], ends[:-1] + 1])[: len(ends)].astype(np.int64)
                keep = ends - starts > 16  # short lines: keep unless blank
                for i in np.flatnonzero(~keep):
                    keep[i] = bool(bytes(data[starts[i] : ends[i]]).strip())
                del data  # release the buffer before the mmap closes
        self._starts, self._ends = starts[keep], ends[keep].astype(np.int64)
        self._lines = np.flatnonzero(keep).astype(np.int64) + 1
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        start, end = int(self._starts[i]), int(self._ends[i])
        return f"{self.path}:{self._lines[i]}", os.pread(self._fd, end - start, start)

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}


class ArrayRecordSource:
    """Random access to an ArrayRecord file of JSON records: item i = ("path#i", bytes)."""

    def __init__(self, path: str | os.PathLike):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.path = os.fspath(path)
        self._source = ArrayRecordDataSource([self.path])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        return f"{self.path}#{i}", self._source[int(i)]


def record_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The files of ``paths`` in order, globs expanded (sorted). `InputError` naming a path or
    glob that matches no file (cheap: to check a config before anything loads)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in map(os.fspath, paths):
        matched = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        if not matched:
            raise InputError(f"{p}: no record file matches")
        for f in matched:
            if not os.path.isfile(f):
                raise InputError(f"{f}: no such record file")
        files += matched
    if not files:
        raise InputError("no record files given")
    return files


class RecordSource:
    """Several JSONL (``*.jsonl``, ``*.json``) and ArrayRecord (``*.arrayrecord``,
    ``*.array_record``) files, concatenated in the order given; globs are expanded (sorted).
    A Grain random-access data source: ``len()``, ``[i] -> (record_id, bytes)``."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        files = record_files(paths)
        self.sources = [
            ArrayRecordSource(f)
            if f.endswith((".arrayrecord", ".array_record"))
            else JsonlSource(f)
            for f in files
        ]
        self._cum = np.cumsum([0] + [len(s) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._cum[-1]

    def __getitem__(self, i: int) -> tuple[str, bytes]:
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range [0, {len(self)})")
        k = bisect.bisect_right(self._cum, i) - 1
        return self.sources[k][i - self._cum[k]]

    def __repr__(self) -> str:
        return f"RecordSource({[s.path for s in self.sources]}, {len(self)} records)"


def write_array_record(records: Iterable[bytes | str | Mapping], path: str | os.PathLike) -> int:
    """Writes records (JSON bytes / text, or dicts serialised to JSON) to an ArrayRecord file,
    one record per group so reads are random access. Returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(os.fspath(path), "group_size:1")
    n = 0
    try:
        for r in records:
            data = json.dumps(r).encode() if isinstance(r, Mapping) else r
            writer.write(data.encode() if isinstance(data, str) else data)
            n += 1
    finally:
        writer.close()
    return n


def jsonl_to_array_record(jsonl_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Converts a JSONL file (blank lines skipped, bytes kept) to ArrayRecord. Returns count."""
    source = JsonlSource(jsonl_path)
    return write_array_record((source[i][1] for i in range(len(source))), out_path)
