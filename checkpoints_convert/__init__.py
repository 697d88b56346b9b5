"""Conversion between the released Hugging Face safetensors layout and Orbax checkpoints.

`hf_to_orbax` and `orbax_to_hf` (both runnable with `python -m`) stream tensor by tensor, write
into a hidden temporary directory beside the target and rename it into place at the end. This
module holds what both share: the error type, the atomic output directory, dtype and size
parsing, and the list of non-weight release files carried along.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import tempfile
import uuid

import ml_dtypes
import numpy as np

from qwen25vl_jax.cli_errors import InputError

DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}
# Non-weight files of a release that vLLM / SGLang / transformers need beside the weights.
ASSET_PATTERNS = (
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
)
ASSETS_DIR = "hf_assets"
_MAX_ASSET_BYTES = 256 << 20


class ConversionError(InputError):
    """A conversion refused or failed; the message names the file and the tensor."""


def out_dtype(choice: str, stored: np.dtype) -> np.dtype:
    """'keep' -> stored, else the named dtype."""
    if choice == "keep":
        return np.dtype(stored)
    if choice not in DTYPES:
        raise ConversionError(f"--dtype={choice}: expected keep, bfloat16 or float32")
    return DTYPES[choice]


def parse_size(text: str) -> int:
    """'5GB' -> 5 * 10**9 bytes ('GiB' -> 2**30, as transformers' max_shard_size)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConversionError(f"size {text!r}: expected e.g. 5GB, 500MB, 2GiB")
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * base**power)


def _contains(outer: str, inner: str) -> bool:
    outer, inner = os.path.realpath(outer), os.path.realpath(inner)
    return inner == outer or inner.startswith(outer + os.sep)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(output_dir: str) -> list[str]:
    """Removes the hidden temporary directories (``.NAME.tmp-PID-*``) that killed conversions
    to ``output_dir`` left behind, when process PID is gone (same host); returns them."""
    parent, name = os.path.split(os.path.abspath(output_dir))
    pattern = re.compile(rf"\.{re.escape(name)}\.tmp-(\d+)-[0-9a-f]+")
    removed = []
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        m = pattern.fullmatch(entry)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output_dir(output_dir: str, *, overwrite: bool, source: str):
    """Yields a fresh temporary directory beside `output_dir`, renamed onto it on success.

    An existing `output_dir` is refused unless `overwrite`; then it is replaced only after
    the new one is complete. On any error the temporary directory is removed; a killed run
    leaves only a hidden `.NAME.tmp-PID-*` directory without the files that mark a checkpoint,
    removed by the next conversion to the same `output_dir`.
    """
    out = os.path.abspath(output_dir)
    if _contains(out, source):  # replacing it would delete the source
        raise ConversionError(f"{out}: output directory is or contains the source {source}")
    if os.path.lexists(out) and not overwrite:
        raise ConversionError(f"{out}: already exists; pass --overwrite to replace it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = os.path.join(
        parent, f".{os.path.basename(out)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    )
    os.mkdir(tmp)  # not mkdtemp: the finished directory keeps the usual umask permissions
    try:
        yield tmp
        if os.path.lexists(out):
            if not overwrite:
                raise ConversionError(f"{out}: appeared during the conversion; not replaced")
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(old, "previous"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_free_space(directory: str, need_bytes: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < need_bytes * 1.02 + (64 << 20):
        raise ConversionError(
            f"{directory}: {free / 1e9:.1f} GB free, the output needs about "
            f"{need_bytes / 1e9:.1f} GB"
        )


def copy_assets(src_dir: str, dst_dir: str) -> list[str]:
    """Copies the release's tokenizer / processor files (not config.json, not weights)."""
    copied = []
    if not src_dir or not os.path.isdir(src_dir):
        return copied
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if (
            os.path.isfile(path)
            and any(fnmatch.fnmatch(name, p) for p in ASSET_PATTERNS)
            and os.path.getsize(path) <= _MAX_ASSET_BYTES
        ):
            os.makedirs(dst_dir, exist_ok=True)
            shutil.copy2(path, os.path.join(dst_dir, name))
            copied.append(name)
    return copied


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes, dtypes and bits (NaN payloads included), without copying to bytes."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    u = f"u{a.dtype.itemsize}"
    return bool(np.array_equal(a.view(u), b.view(u)))
