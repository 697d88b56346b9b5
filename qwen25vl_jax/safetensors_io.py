"""Lazy, validating safetensors reading (memory-mapped, bf16 included) and a streaming writer.

The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw bytes. Reading it ourselves keeps tensors on disk until asked for
(one at a time), gives bfloat16 through ml_dtypes, and lets every error name file and tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
CODES = {v: k for k, v in DTYPES.items()}
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class SafetensorsError(ValueError):
    """A malformed or unsupported safetensors file; the message names the file and tensor."""


class SafetensorsFile:
    """One .safetensors file, read lazily: `keys()`, `shape(k)`, `dtype(k)`, `get(k)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: truncated (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise SafetensorsError(f"{self.path}: truncated or corrupt header (length {n})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: corrupt header ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupt header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self._start = 8 + n
        self._entries = header
        for name, e in header.items():
            try:
                dtype, shape, (a, b) = e["dtype"], e["shape"], e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: tensor {name!r}: corrupt entry") from None
            if dtype not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r}: unsupported dtype {dtype}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
            if b - a != nbytes or a < 0:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r}: {b - a} bytes for shape {shape} {dtype}"
                )
            if self._start + b > size:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r}: truncated file (needs {self._start + b} "
                    f"bytes, has {size})"
                )

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return DTYPES[self._entries[name]["dtype"]]

    def nbytes(self, name: str) -> int:
        a, b = self._entries[name]["data_offsets"]
        return b - a

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory map (no copy until used)."""
        e = self._entries[name]
        shape = tuple(e["shape"])
        if int(np.prod(shape, dtype=np.int64)) == 0:
            return np.zeros(shape, DTYPES[e["dtype"]])
        return np.memmap(
            self.path,
            dtype=DTYPES[e["dtype"]],
            mode="r",
            offset=self._start + e["data_offsets"][0],
            shape=shape,
        )

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the tensor read into memory with file reads (several times
        faster than faulting a memory map in page by page; the streaming converters use it)."""
        e, shape, dtype = self._entries[name], self.shape(name), self.dtype(name)
        if shape:
            stop = shape[0] if stop is None else min(stop, shape[0])
            out = np.empty((max(stop - start, 0), *shape[1:]), dtype)
        else:
            start, out = 0, np.empty((), dtype)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        buf, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._start + e["data_offsets"][0] + start * row)
            while done < len(buf):  # one read() returns at most ~2 GiB
                n = f.readinto(buf[done : done + (1 << 30)])
                if not n:
                    raise SafetensorsError(f"{self.path}: tensor {name!r}: truncated file")
                done += n
        return out


class SafetensorsDir:
    """A checkpoint directory: `model.safetensors`, or shards listed by
    `model.safetensors.index.json`. Maps tensor name -> file, opening each file once."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"{self.path}: not a directory")
        index = os.path.join(self.path, "model.safetensors.index.json")
        single = os.path.join(self.path, "model.safetensors")
        files = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SafetensorsError(f"{index}: corrupt index ({e!r})") from None
        elif os.path.isfile(single):
            weight_map = None
            files = ["model.safetensors"]
        elif files:
            weight_map = None
        else:
            pickled = [f for f in os.listdir(self.path) if f.endswith(PICKLED)]
            if pickled:
                raise SafetensorsError(
                    f"{self.path}: only pickled weights ({', '.join(sorted(pickled))}); convert "
                    "them to safetensors first (loading pickles runs arbitrary code, so this "
                    "project never unpickles)"
                )
            raise FileNotFoundError(f"{self.path}: no *.safetensors files")
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        if weight_map is not None:
            for name, fname in weight_map.items():
                if not os.path.isfile(os.path.join(self.path, fname)):
                    raise SafetensorsError(f"{index}: tensor {name!r} is in missing file {fname}")
                self._where[name] = fname
            for fname in sorted(set(weight_map.values())):
                f = self._open(fname)
                for name in f.keys():
                    if self._where.get(name) != fname:
                        raise SafetensorsError(f"{f.path}: tensor {name!r} not in the index")
                for name in (k for k, v in weight_map.items() if v == fname):
                    if name not in f._entries:
                        raise SafetensorsError(f"{f.path}: tensor {name!r} from the index missing")
        else:
            for fname in files:
                for name in self._open(fname).keys():
                    if name in self._where:
                        raise SafetensorsError(f"{self.path}: tensor {name!r} in two files")
                    self._where[name] = fname

    def _open(self, fname: str) -> SafetensorsFile:
        if fname not in self._files:
            self._files[fname] = SafetensorsFile(os.path.join(self.path, fname))
        return self._files[fname]

    def keys(self) -> list[str]:
        return list(self._where)

    def file(self, name: str) -> SafetensorsFile:
        return self._open(self._where[name])

    def get(self, name: str) -> np.ndarray:
        return self.file(name).get(name)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.file(name).read(name, start, stop)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._where:
            yield name, self.get(name)


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata=None) -> None:
    """Writes tensors to `path` through a temporary file renamed at the end (never half-written).

    Streams tensor by tensor, so memory holds one tensor at a time beyond the caller's own.
    """
    header, offset = {}, 0
    for name, a in tensors.items():
        dt = np.dtype(a.dtype)
        if dt not in CODES:
            raise SafetensorsError(f"{path}: tensor {name!r}: unsupported dtype {dt}")
        nbytes = a.size * dt.itemsize
        header[name] = {
            "dtype": CODES[dt],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for a in tensors.values():
                f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # no bytes copy
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
