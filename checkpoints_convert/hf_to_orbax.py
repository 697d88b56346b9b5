"""Released Hugging Face checkpoint (safetensors) -> Orbax checkpoint, streamed slab by slab.

    python -m checkpoints_convert.hf_to_orbax --hf_dir=DIR --output_dir=DIR \
        [--dtype=keep|bfloat16|float32] [--overwrite]

Everything is validated from the safetensors headers and config.json before a byte is written
(missing / unexpected tensors, shapes against config.json, dtypes, truncation, pickles). Then
each stacked parameter is created in the Orbax OCDBT store and filled one layer at a time, each
source tensor read from its file when needed (very large unstacked ones in row blocks); writes
are grouped into tensorstore transactions of ~32 MB, one committing while the next fills. Peak
memory is a few layer tensors, never a stack or the model: the 72B release converts on a 64 GB
host. Output lands in a hidden temporary directory renamed onto `--output_dir` at the end,
after every array is read back (shapes, dtypes, first slab byte for byte); see
`qwen25vl_jax.checkpoint` for the layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator

import ml_dtypes
import numpy as np
import tensorstore as ts

from checkpoints_convert import (
    ASSETS_DIR,
    ConversionError,
    atomic_output_dir,
    check_free_space,
    copy_assets,
    out_dtype,
    same_bytes,
)
from checkpoints_convert.progress import Progress
from qwen25vl_jax.checkpoint import (
    CONFIG_FILE,
    PARAMS_ITEM,
    ParamsReader,
    ParamsWriter,
    write_json,
)
from qwen25vl_jax.cli_errors import require_flags
from qwen25vl_jax.config import ModelConfig, from_hf_config
from qwen25vl_jax.hf_weights import RULES, Rule, check_names, stacked_shape, transpose2d
from qwen25vl_jax.safetensors_io import SafetensorsDir, SafetensorsError

SOURCE_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
SLAB_BYTES = 64 << 20  # unstacked tensors larger than this are written in row blocks
TXN_BYTES = 32 << 20  # writes grouped per commit


@dataclasses.dataclass
class Plan:
    """A validated source: config, files, and per weight kind the tensor names and dtype."""

    hf_dir: str
    cfg: ModelConfig
    tensors: SafetensorsDir
    names: dict[str, list[str]]  # parameter path -> source tensor names (by layer)
    dtypes: dict[str, np.dtype]  # parameter path -> source dtype


def plan(hf_dir: str) -> Plan:
    """Reads and checks config.json and every safetensors header; raises `ConversionError`."""
    hf_dir = os.path.abspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir}: not a directory")
    try:
        tensors = SafetensorsDir(hf_dir)  # refuses pickled-only directories first
        cfg = from_hf_config(hf_dir)
        by_released = check_names(cfg, tensors.keys(), hf_dir)
    except (ValueError, FileNotFoundError) as e:
        raise ConversionError(str(e)) from None
    cfg_file = os.path.join(hf_dir, CONFIG_FILE)
    names, dtypes = {}, {}
    for rule in RULES:
        if not rule.when(cfg):
            continue
        n = rule.layers(cfg)
        released = [rule.hf] if n is None else [rule.hf.format(i=i) for i in range(n)]
        src = [by_released[r] for r in released]
        for name in src:
            f = tensors.file(name)
            where, shape, dtype = f"{f.path}: tensor {name!r}", f.shape(name), f.dtype(name)
            if shape != rule.hf_shape(cfg):
                raise ConversionError(
                    f"{where}: shape {shape}, but {cfg_file} implies {rule.hf_shape(cfg)}"
                )
            if dtype not in SOURCE_DTYPES:
                raise ConversionError(
                    f"{where}: unsupported dtype {dtype} (expected bfloat16, float16 or float32)"
                )
            if dtype != tensors.file(src[0]).dtype(src[0]):
                raise ConversionError(
                    f"{where}: dtype {dtype} differs from {src[0]!r}; pick one with --dtype"
                )
        names[rule.path], dtypes[rule.path] = src, tensors.file(src[0]).dtype(src[0])
    return Plan(hf_dir, cfg, tensors, names, dtypes)


def _rule(path) -> Rule:
    return next(r for r in RULES if r.path == path)


def slabs(p: Plan, rule: Rule, dtype, align=None) -> Iterator[tuple[tuple, Callable, int]]:
    """(index into our array, a function making that slab, source tensors it completes).

    Row blocks of large unstacked tensors are aligned to the storage chunks (`align`: the
    chunk shape), so no chunk is written twice."""
    cfg, names = p.cfg, p.names[rule.path]
    cast = lambda x: x.astype(dtype, copy=False)  # noqa: E731
    if rule.layers(cfg) is not None:
        for i, name in enumerate(names):
            yield (i,), lambda name=name: cast(rule.to_ours(p.tensors.read(name), cfg)), 1
        return
    name, hf_shape, our_shape = names[0], rule.hf_shape(cfg), rule.our_shape(cfg)
    rows = max(1, SLAB_BYTES // max(1, int(np.prod(hf_shape[1:])) * np.dtype(dtype).itemsize))
    blockable = len(hf_shape) == 2 and (
        (rule.kind == "copy" and our_shape == hf_shape)
        or (rule.kind == "linear" and our_shape == hf_shape[::-1])
    )
    if align is not None and blockable:
        step = align[0] if rule.kind == "copy" else align[1]
        rows = max(step, rows // step * step)
    if not blockable or rows >= hf_shape[0]:
        yield (), lambda: cast(rule.to_ours(p.tensors.read(name), cfg)), 1
        return
    for r0 in range(0, hf_shape[0], rows):  # row blocks of the source are contiguous
        r1 = min(r0 + rows, hf_shape[0])
        rows_of = lambda r0=r0, r1=r1: p.tensors.read(name, r0, r1)  # noqa: E731
        if rule.kind == "copy":
            yield (slice(r0, r1),), lambda f=rows_of: cast(f()), int(r1 == hf_shape[0])
        else:
            idx = (slice(None), slice(r0, r1))
            yield idx, lambda f=rows_of: cast(transpose2d(f())), int(r1 == hf_shape[0])


class _Batches:
    """Groups slab writes into tensorstore transactions of about `TXN_BYTES` (a commit per
    small tensor would dominate the time); one group commits while the next fills, so at most
    two groups (or two slabs, if larger) are held in memory."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.txn, self.used, self.tensors, self.committing = ts.Transaction(), 0, 0, None

    def write(self, arr, idx: tuple, data: np.ndarray, tensors: int, what: str) -> None:
        try:
            arr.with_transaction(self.txn)[idx].write(data).result()  # copies into the txn
        except Exception as e:  # tensorstore raises ValueError / RuntimeError variants
            raise ConversionError(f"writing {what}: {e}") from None
        self.used += data.nbytes
        self.tensors += tensors
        if self.used >= TXN_BYTES:
            self.flush()

    def flush(self, *, wait: bool = False) -> None:
        if self.used:
            self._wait()
            self.committing = (self.txn.commit_async(), self.tensors, self.used)
            self.txn, self.used, self.tensors = ts.Transaction(), 0, 0
        if wait:
            self._wait()

    def _wait(self) -> None:
        if self.committing is not None:
            fut, tensors, nbytes = self.committing
            self.committing = None
            try:
                fut.result()
            except Exception as e:
                raise ConversionError(f"committing writes: {e}") from None
            self.progress.update(tensors, nbytes)


def _write_rule(p: Plan, rule: Rule, writer: ParamsWriter, dtype, batches: _Batches) -> None:
    shape = stacked_shape(rule, p.cfg)
    arr = writer.create(rule.path, shape, dtype, stacked=rule.layers(p.cfg) is not None)
    chunk = arr.chunk_layout.write_chunk.shape
    for idx, make, done in slabs(p, rule, dtype, align=chunk):
        data = make()
        batches.write(arr, idx, data, done, f"{rule.path}{list(idx)}")
        del data


def _verify(p: Plan, params_dir: str, dtypes: dict) -> None:
    """Re-opens the finished item as a reader does; checks every shape and dtype and compares
    the first slab of every array with the source, byte for byte."""
    reader = ParamsReader(params_dir)
    if set(reader.paths()) != set(p.names):
        raise ConversionError(f"{params_dir}: written parameters differ from the plan")
    for path, dtype in dtypes.items():
        rule, arr = _rule(path), reader.array(path)
        if tuple(arr.shape) != stacked_shape(rule, p.cfg) or reader.dtype(path) != dtype:
            raise ConversionError(
                f"{params_dir}: parameter {path} reads back as "
                f"{tuple(arr.shape)} {reader.dtype(path)}"
            )
        idx, make, _ = next(slabs(p, rule, dtype, align=arr.chunk_layout.write_chunk.shape))
        if not same_bytes(make(), arr[idx].read().result()):
            raise ConversionError(
                f"{params_dir}: parameter {path}{list(idx)} reads "
                f"back different from {p.names[path][0]!r}"
            )


def convert(
    hf_dir: str,
    output_dir: str,
    *,
    dtype: str = "keep",
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Converts; returns the absolute output directory. Raises `ConversionError`."""
    hf_dir, output_dir = os.path.abspath(hf_dir), os.path.abspath(output_dir)
    if os.path.lexists(output_dir) and not overwrite:  # fail before reading anything
        raise ConversionError(f"{output_dir}: already exists; pass --overwrite to replace it")
    p = plan(hf_dir)
    dtypes = {path: out_dtype(dtype, d) for path, d in p.dtypes.items()}
    sizes = {
        path: int(np.prod(stacked_shape(_rule(path), p.cfg))) * d.itemsize
        for path, d in dtypes.items()
    }
    total_tensors = sum(len(v) for v in p.names.values())
    with atomic_output_dir(output_dir, overwrite=overwrite, source=hf_dir) as tmp:
        check_free_space(tmp, sum(sizes.values()))
        params_dir = os.path.join(tmp, PARAMS_ITEM)
        writer = ParamsWriter(params_dir)
        bar = Progress("hf_to_orbax", total_tensors, sum(sizes.values()), enabled=progress)
        batches = _Batches(bar)
        for path, d in dtypes.items():
            _write_rule(p, _rule(path), writer, d, batches)
        batches.flush(wait=True)
        writer.finish()
        bar.close()
        _verify(p, params_dir, dtypes)
        copy_assets(hf_dir, os.path.join(tmp, ASSETS_DIR))
        write_json(os.path.join(tmp, CONFIG_FILE), p.cfg.to_hf_dict())
    return output_dir


def main(argv) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    require_flags("hf_dir", "output_dir")
    out = convert(f.hf_dir, f.output_dir, dtype=f.dtype, overwrite=f.overwrite)
    print(json.dumps({"output_dir": out}))


def _define_flags() -> None:
    """Flags are defined only when run as a program (the two converters share names)."""
    from absl import flags

    flags.DEFINE_string("hf_dir", None, "released checkpoint directory")
    flags.DEFINE_string("output_dir", None, "Orbax checkpoint directory to create")
    flags.DEFINE_enum("dtype", "keep", ["keep", "bfloat16", "float32"], "stored dtype")
    flags.DEFINE_bool("overwrite", False, "replace an existing output directory")


if __name__ == "__main__":
    from qwen25vl_jax.cli_errors import run

    _define_flags()  # errors: one line, exit status 2 (ConversionError is an InputError)
    run(main, "hf_to_orbax", (SafetensorsError,))
