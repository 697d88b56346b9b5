"""Processor-format arrays checked against a model's config at the door, before the model loads.

`loading.read_processor_arrays` reads an .npz and checks each array alone (names, ranks,
dtypes); `check_processor_arrays` checks them against each other and the model: every
inconsistency the model would otherwise meet as a deep ValueError, an index error or silent
garbage (a token id past the vocabulary reads a clamped embedding row) becomes an `InputError`
naming the source and the array.
"""

from __future__ import annotations

import numpy as np

from qwen25vl_jax.cli_errors import InputError
from qwen25vl_jax.config import ModelConfig

_MEDIA = (
    ("image", "pixel_values", "image_grid_thw"),
    ("video", "pixel_values_videos", "video_grid_thw"),
)


def check_processor_arrays(arrays: dict[str, np.ndarray], cfg: ModelConfig, source: str) -> None:
    """Raises `InputError` ("SOURCE: 'array': reason") unless the arrays (each of the rank and
    dtype `loading.read_processor_arrays` checks) are consistent with each other and with
    ``cfg``: token ids in [0, vocab_size), every image / video token backed by a grid and its
    pixel rows, rows ``patch_dim`` (1176) wide, grids positive and divisible by the merge."""
    ids = np.asarray(arrays["input_ids"])
    if 0 in ids.shape:
        raise InputError(f"{source}: 'input_ids' is empty {list(ids.shape)}")
    vocab = cfg.text.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        bad = ids[(ids < 0) | (ids >= vocab)]
        raise InputError(
            f"{source}: 'input_ids' holds token id {int(bad[0])}, outside the "
            f"model's vocabulary [0, {vocab})"
        )
    mask = arrays.get("attention_mask")
    if mask is not None and not np.isin(mask, (0, 1)).all():
        raise InputError(f"{source}: 'attention_mask' holds values other than 0 and 1")
    real = ids if mask is None else ids[mask.astype(bool)]
    merge, width = cfg.vision.merge_unit, cfg.vision.patch_dim
    token_of = {"image": cfg.image_token_id, "video": cfg.video_token_id}
    for kind, pix_key, grid_key in _MEDIA:
        tokens = int((real == token_of[kind]).sum())
        if tokens and grid_key not in arrays:
            raise InputError(
                f"{source}: 'input_ids' holds {tokens} {kind} tokens but there is no '{grid_key}'"
            )
        if grid_key not in arrays:
            if pix_key in arrays:
                raise InputError(f"{source}: '{pix_key}' without '{grid_key}'")
            continue
        grids = np.asarray(arrays[grid_key])
        side = cfg.vision.spatial_merge_size
        if (grids < 1).any() or (grids[:, 1:] % side).any():
            raise InputError(
                f"{source}: '{grid_key}' must be [n, 3] of positive (t, h, w) with "
                f"h, w multiples of {side}, got {grids.tolist()}"
            )
        if pix_key not in arrays:
            raise InputError(f"{source}: '{grid_key}' without '{pix_key}'")
        pix = arrays[pix_key]
        if pix.ndim != 2 or pix.shape[1] != width or not np.issubdtype(pix.dtype, np.floating):
            raise InputError(
                f"{source}: '{pix_key}' must be float [patches, {width}], got "
                f"{pix.dtype}{list(pix.shape)}"
            )
        need = int(np.prod(grids, axis=1).sum())
        if len(pix) != need:
            raise InputError(
                f"{source}: '{pix_key}' has {len(pix)} rows, '{grid_key}' describes {need}"
            )
        backed = int(np.prod(grids, axis=1).sum()) // merge
        if tokens != backed:
            raise InputError(
                f"{source}: 'input_ids' holds {tokens} {kind} tokens, '{grid_key}' "
                f"describes {backed}"
            )
    spg = arrays.get("second_per_grid_ts")
    if spg is not None:
        videos = len(arrays.get("video_grid_thw", ()))
        if spg.ndim != 1 or len(spg) != videos or not (np.asarray(spg, float) > 0).all():
            raise InputError(
                f"{source}: 'second_per_grid_ts' must be {videos} positive values "
                f"(one per video), got {spg.tolist()}"
            )
