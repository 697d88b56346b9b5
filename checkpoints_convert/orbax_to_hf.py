"""Orbax checkpoint (converted or a trainer step) -> the released Hugging Face layout.

    python -m checkpoints_convert.orbax_to_hf --checkpoint=DIR --output_dir=DIR \
        [--max_shard_size=5GB] [--dtype=keep|bfloat16|float32] [--overwrite] [--hf_assets=DIR]

Writes config.json in the released flat format, `model.safetensors` (or shards
`model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`), and the tokenizer /
processor files kept by `hf_to_orbax` (or copied from `--hf_assets`): a directory that
transformers, vLLM and SGLang load. Tensors are read one storage-chunk row at a time (one layer
for converted checkpoints and for trainers saving with `param_save_args`) and written one at a
time, into a temporary directory renamed onto `--output_dir` at the end.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from checkpoints_convert import (
    ASSETS_DIR,
    ConversionError,
    atomic_output_dir,
    check_free_space,
    copy_assets,
    out_dtype,
    parse_size,
    same_bytes,
)
from checkpoints_convert.progress import Progress
from qwen25vl_jax.checkpoint import (
    CONFIG_FILE,
    ParamsReader,
    check_params,
    locate_params,
    read_config,
    write_json,
)
from qwen25vl_jax.cli_errors import require_flags
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.hf_weights import Rule, check_names, expected_names, transpose2d
from qwen25vl_jax.safetensors_io import SafetensorsDir, SafetensorsError, write_safetensors

INDEX_FILE = "model.safetensors.index.json"
BLOCK_BYTES = 64 << 20  # large unstacked tensors are read in row blocks of about this size
VERIFY_BYTES = 256 << 20  # larger unstacked tensors (embeddings) are checked by shape only


class LazyTensor:
    """An array-like whose shape and dtype are known up front and whose values are made only
    when `np.asarray` asks (the safetensors writer asks one tensor at a time)."""

    def __init__(self, shape, dtype, make, on_done=None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._make, self._on_done = make, on_done

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self._make()).astype(self.dtype, copy=False)
        if a.shape != self.shape:
            raise ConversionError(f"made shape {a.shape}, announced {self.shape}")
        if self._on_done is not None:
            self._on_done(a.nbytes)
        return a if dtype is None else a.astype(dtype, copy=False)


def shard_plan(sizes: list[int], max_bytes: int) -> list[int]:
    """Greedy shard index per tensor, in order; a tensor above `max_bytes` gets its own."""
    out, shard, used = [], 0, 0
    for s in sizes:
        if used and used + s > max_bytes:
            shard, used = shard + 1, 0
        out.append(shard)
        used += s
    return out


def write_release(
    out_dir: str,
    cfg: ModelConfig,
    tensors: list[tuple[str, object]],
    *,
    max_shard_bytes: int,
    extra_config: dict | None = None,
) -> list[str]:
    """Writes config.json and the safetensors files (+ index when sharded) of `tensors`
    ((released name, array or LazyTensor), in order); returns the file names."""
    shard_of = shard_plan(
        [int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for _, a in tensors], max_shard_bytes
    )
    n = shard_of[-1] + 1 if tensors else 1
    files = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    )
    for k, fname in enumerate(files):
        part = {name: a for (name, a), s in zip(tensors, shard_of, strict=True) if s == k}
        write_safetensors(os.path.join(out_dir, fname), part, metadata={"format": "pt"})
    if n > 1:
        total = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for _, a in tensors)
        weight_map = {name: files[s] for (name, _), s in zip(tensors, shard_of, strict=True)}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_json(os.path.join(out_dir, INDEX_FILE), index)
    write_json(os.path.join(out_dir, CONFIG_FILE), {**cfg.to_hf_dict(), **(extra_config or {})})
    return files


class _Blocks:
    """Reads stacked arrays one storage-chunk row of layers at a time, keeping only the last;
    builds large unstacked 2-D tensors (embeddings) from row blocks, never two whole copies."""

    def __init__(self, reader: ParamsReader):
        self.reader = reader
        self.key, self.block = None, None

    def ours(self, rule: Rule, layer: int) -> np.ndarray:
        arr = self.reader.array(rule.path)
        rows = (arr.chunk_layout.read_chunk.shape or (1,))[0] or 1
        b = layer // rows
        if self.key != (rule.path, b):
            self.key, self.block = None, None  # free the old block before reading the next
            self.block = arr[b * rows : (b + 1) * rows].read().result()
            self.key = (rule.path, b)
        return self.block[layer - b * rows]

    def hf(self, rule: Rule, layer: int | None, cfg: ModelConfig, dtype) -> np.ndarray:
        if layer is not None:
            return rule.to_hf(self.ours(rule, layer), cfg).astype(dtype, copy=False)
        arr = self.reader.array(rule.path)
        hf_shape, our_shape = rule.hf_shape(cfg), rule.our_shape(cfg)
        copy = rule.kind == "copy" and our_shape == hf_shape
        linear = rule.kind == "linear" and our_shape == hf_shape[::-1]
        if len(hf_shape) != 2 or not (copy or linear):
            return rule.to_hf(arr.read().result(), cfg).astype(dtype, copy=False)
        out = np.empty(hf_shape, dtype)
        step = arr.chunk_layout.read_chunk.shape[0 if copy else 1]
        rows = max(step, BLOCK_BYTES // (hf_shape[1] * out.itemsize) // step * step)
        for r0 in range(0, hf_shape[0], rows):  # HF rows are our rows (copy) or columns
            r1 = min(r0 + rows, hf_shape[0])
            part = arr[r0:r1] if copy else arr[:, r0:r1]
            block = part.read().result()
            out[r0:r1] = block if copy else transpose2d(block)
        return out


def _open(checkpoint: str):
    try:
        params_dir = locate_params(checkpoint)
        cfg = read_config(checkpoint)
        reader = ParamsReader(params_dir)
        check_params(reader.shapes(), cfg, params_dir)
    except (ValueError, FileNotFoundError) as e:
        raise ConversionError(str(e)) from None
    return cfg, reader


def _verify(out_dir: str, cfg: ModelConfig, tensors, blocks: _Blocks) -> None:
    """Re-opens the written directory as a loader does: names, shapes and dtypes of all
    tensors, and bytes of the first layer of every weight kind (and of each unstacked tensor
    up to `VERIFY_BYTES`) against the checkpoint."""
    try:
        written = SafetensorsDir(out_dir)
        check_names(cfg, written.keys(), out_dir)
    except ValueError as e:
        raise ConversionError(f"written files do not read back: {e}") from None
    want = dict(tensors)
    for rule, layer, name in expected_names(cfg):
        f, w = written.file(name), want[name]
        if f.shape(name) != w.shape or f.dtype(name) != w.dtype:
            raise ConversionError(
                f"{f.path}: tensor {name!r} reads back as {f.shape(name)} {f.dtype(name)}"
            )
        sampled = layer == 0 or (layer is None and w.nbytes <= VERIFY_BYTES)
        if sampled and not same_bytes(blocks.hf(rule, layer, cfg, w.dtype), written.read(name)):
            raise ConversionError(f"{f.path}: tensor {name!r} differs from the checkpoint")


def export(
    checkpoint: str,
    output_dir: str,
    *,
    max_shard_size: str | int = "5GB",
    dtype: str = "keep",
    overwrite: bool = False,
    progress: bool = True,
    hf_assets: str | None = None,
) -> str:
    """Exports; returns the absolute output directory. Raises `ConversionError`."""
    checkpoint, output_dir = os.path.abspath(checkpoint), os.path.abspath(output_dir)
    if os.path.lexists(output_dir) and not overwrite:  # fail before reading anything
        raise ConversionError(f"{output_dir}: already exists; pass --overwrite to replace it")
    max_bytes = max_shard_size if isinstance(max_shard_size, int) else parse_size(max_shard_size)
    cfg, reader = _open(checkpoint)
    blocks = _Blocks(reader)
    names = list(expected_names(cfg))
    bar = Progress("orbax_to_hf", len(names), 0, enabled=progress)
    tensors = []
    for rule, layer, name in names:
        d = out_dtype(dtype, reader.dtype(rule.path))
        make = functools.partial(blocks.hf, rule, layer, cfg, d)
        lazy = LazyTensor(rule.hf_shape(cfg), d, make, on_done=lambda nb: bar.update(1, nb))
        tensors.append((name, lazy))
    bar.total_bytes = sum(t.nbytes for _, t in tensors)
    out_dtypes = {t.dtype.name for _, t in tensors}
    torch_dtype = out_dtypes.pop() if len(out_dtypes) == 1 else "float32"
    with atomic_output_dir(output_dir, overwrite=overwrite, source=checkpoint) as tmp:
        check_free_space(tmp, bar.total_bytes)
        write_release(
            tmp, cfg, tensors, max_shard_bytes=max_bytes, extra_config={"torch_dtype": torch_dtype}
        )
        bar.close()
        _verify(tmp, cfg, tensors, blocks)
        copy_assets(os.path.join(os.path.dirname(reader.dir), ASSETS_DIR), tmp)
        copy_assets(hf_assets, tmp)
    return output_dir


def main(argv) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    require_flags("checkpoint", "output_dir")
    out = export(
        f.checkpoint,
        f.output_dir,
        max_shard_size=f.max_shard_size,
        dtype=f.dtype,
        overwrite=f.overwrite,
        hf_assets=f.hf_assets,
    )
    print(json.dumps({"output_dir": out}))


def _define_flags() -> None:
    """Flags are defined only when run as a program (the two converters share names)."""
    from absl import flags

    flags.DEFINE_string("checkpoint", None, "converted checkpoint or trainer step directory")
    flags.DEFINE_string("output_dir", None, "Hugging Face directory to create")
    flags.DEFINE_string("max_shard_size", "5GB", "largest safetensors file, e.g. 5GB, 500MB")
    flags.DEFINE_enum("dtype", "keep", ["keep", "bfloat16", "float32"], "written dtype")
    flags.DEFINE_bool("overwrite", False, "replace an existing output directory")
    flags.DEFINE_string("hf_assets", None, "copy tokenizer / processor files from this release")


if __name__ == "__main__":
    from qwen25vl_jax.cli_errors import run

    _define_flags()
    run(main, "orbax_to_hf", (SafetensorsError,))  # ConversionError is an InputError
