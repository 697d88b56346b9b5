"""What a tool loads from disk: a model (an Orbax checkpoint or a Hugging Face directory) and the
Hugging Face processor's arrays (an `.npz`, never unpickled), each error naming the file.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

# The processor arrays a model input may hold: input_ids int[B, L], attention_mask int[B, L],
# pixel_values float[N, patch_dim], image_grid_thw int[n, 3], pixel_values_videos
# float[M, patch_dim], video_grid_thw int[m, 3], second_per_grid_ts float[m].
PROCESSOR_ARRAYS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
)
_RANKS = {name: 1 if name == "second_per_grid_ts" else 2 for name in PROCESSOR_ARRAYS}
_INTEGER = ("input_ids", "image_grid_thw", "video_grid_thw")  # and the mask: integers or bools


# the loaders' errors that are about the user's files (their messages name the file / tensor):
# command-line tools report them as one line (`cli_errors.input_errors`)
LOAD_ERRORS = (ValueError, OSError)


def read_model_config(*, checkpoint=None, hf_dir=None):
    """The `ModelConfig` of exactly one of an Orbax `checkpoint` or a Hugging Face `hf_dir`,
    without reading weights (to check inputs before a model loads)."""
    if (checkpoint is None) == (hf_dir is None):
        raise ValueError("give exactly one of a checkpoint and a Hugging Face directory")
    if checkpoint is not None:
        from qwen25vl_jax.checkpoint import read_config

        return read_config(checkpoint)
    from qwen25vl_jax.config import from_hf_config

    return from_hf_config(hf_dir)


def load_model(*, checkpoint=None, hf_dir=None, dtype=None, mesh=None):
    """(Qwen25VL, ModelConfig) from exactly one of an Orbax `checkpoint` (a checkpoint or a
    trainer step directory) or a Hugging Face `hf_dir` (config.json + safetensors).

    dtype: the parameters' dtype (None: as stored in the checkpoint; float32 from safetensors).
    mesh: restore the checkpoint straight into the mesh's shards (a Hugging Face directory is
    read onto the default device)."""
    if (checkpoint is None) == (hf_dir is None):
        raise ValueError("give exactly one of a checkpoint and a Hugging Face directory")
    if checkpoint is not None:
        from qwen25vl_jax.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint, param_dtype=dtype, mesh=mesh)
    from qwen25vl_jax.hf_weights import load_hf

    return load_hf(hf_dir, param_dtype=np.float32 if dtype is None else dtype)


def read_processor_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The processor arrays (`PROCESSOR_ARRAYS`) of an .npz, read without unpickling. Raises
    FileNotFoundError or ValueError naming the file and the array: no input_ids, an unknown
    array, a wrong rank, a non-integer id or grid, or a mask of another shape."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such inputs file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz of plain arrays ({e})") from None
    if "input_ids" not in arrays:
        raise ValueError(f"{path}: missing 'input_ids'")
    if unknown := sorted(set(arrays) - set(PROCESSOR_ARRAYS)):
        raise ValueError(f"{path}: unknown arrays {unknown}; expected some of {PROCESSOR_ARRAYS}")
    for name, a in arrays.items():
        if a.ndim != _RANKS[name]:
            raise ValueError(
                f"{path}: array {name!r} has shape {a.shape}, expected rank {_RANKS[name]}"
            )
        integer = np.issubdtype(a.dtype, np.integer) or (
            name == "attention_mask" and a.dtype == np.bool_
        )
        if (name in _INTEGER or name == "attention_mask") and not integer:
            raise ValueError(f"{path}: array {name!r} has dtype {a.dtype}, expected integers")
        if name.endswith("_grid_thw") and a.shape[1] != 3:
            raise ValueError(f"{path}: array {name!r} has shape {a.shape}, expected [n, 3]")
    mask = arrays.get("attention_mask")
    if mask is not None and mask.shape != arrays["input_ids"].shape:
        raise ValueError(
            f"{path}: attention_mask shape {mask.shape} differs from input_ids "
            f"{arrays['input_ids'].shape}"
        )
    return arrays
