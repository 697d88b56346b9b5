"""The edge to the Hugging Face processor's format: `input_ids` / `attention_mask` [B, L] with
every medium's patches concatenated into `pixel_values` (images) and `pixel_values_videos`,
described by `image_grid_thw` / `video_grid_thw` [M, 3] and `second_per_grid_ts` [V].

Processor arrays -> samples (`samples_from_hf`) and back (`hf_from_samples`), plus the
processor-format entry points built on them: `inputs_from_hf` / `batch_from_hf` (the scorer
and the parity tests) and `rope_index` (a port of transformers' `get_rope_index`). Inside the
library only samples travel; media are assigned to rows and to tokens in order, as the
reference's `masked_scatter` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.layout import modality_runs, sample_rope_positions, token_modalities
from qwen25vl_jax.data.media import Media
from qwen25vl_jax.data.sample import Sample, make_sample
from qwen25vl_jax.model.inputs import Batch, ModelInputs

_KINDS = {
    1: ("image", "pixel_values", "image_grid_thw"),
    2: ("video", "pixel_values_videos", "video_grid_thw"),
}


def _ids_and_mask(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(arrays["input_ids"], np.int64)
    ids = ids[None] if ids.ndim == 1 else ids
    mask = arrays.get("attention_mask")
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64).reshape(ids.shape)
    return ids, mask


def _row_media(cfg: ModelConfig, rows: Sequence[np.ndarray], arrays: Mapping[str, np.ndarray]):
    """Per row, its media as (kind, grid, second_per_grid_t, index within its kind) in order of
    appearance: each run of pad tokens takes the next grids of its kind until filled."""
    grids = {
        code: [
            tuple(int(v) for v in g)
            for g in np.asarray(arrays.get(key, np.zeros((0, 3)))).reshape(-1, 3)
        ]
        for code, (_, _, key) in _KINDS.items()
    }
    spg = arrays.get("second_per_grid_ts")
    spg = None if spg is None else [float(v) for v in np.asarray(spg).reshape(-1)]
    if spg is not None and len(spg) != len(grids[2]):
        raise ValueError(f"second_per_grid_ts: {len(spg)} values for {len(grids[2])} videos")
    taken, merge2, out = {1: 0, 2: 0}, cfg.vision.merge_unit, []
    for r, ids in enumerate(rows):
        media = []
        for code, a, b in modality_runs(token_modalities(ids, cfg)):
            count = 0
            while code and count < b - a:
                kind, _, key = _KINDS[code]
                if taken[code] == len(grids[code]):
                    raise ValueError(f"row {r} {kind} tokens: more than {key} provides")
                k, grid = taken[code], grids[code][taken[code]]
                media.append((kind, grid, spg[k] if code == 2 and spg else None, k))
                taken[code] += 1
                count += int(np.prod(grid)) // merge2
            if count > b - a:
                raise ValueError(f"row {r}: a run of {b - a} {kind} tokens, the grids give {count}")
        out.append(media)
    for code, (_, _, key) in _KINDS.items():
        if taken[code] != len(grids[code]):
            raise ValueError(f"{key}: {len(grids[code])} grids, the tokens use {taken[code]}")
    return out


def samples_from_hf(
    cfg: ModelConfig, arrays: Mapping[str, np.ndarray], supervised: np.ndarray | None = None
) -> list[Sample]:
    """Processor arrays -> one `Sample` per row (its real tokens, `attention_mask` == 1).
    supervised: bool[B, L], the tokens to predict (as labels != -100); None = none."""
    ids, mask = _ids_and_mask(arrays)
    keep = mask.astype(bool)
    rows = [ids[r][keep[r]] for r in range(len(ids))]
    offsets = {}
    for kind, pv_key, grid_key in _KINDS.values():
        grids = np.asarray(arrays.get(grid_key, np.zeros((0, 3))), np.int64).reshape(-1, 3)
        sizes = grids.prod(-1)
        values = arrays.get(pv_key)
        have = 0 if values is None else len(values)
        if int(sizes.sum()) != have:
            raise ValueError(f"{pv_key}: {have} patch rows, but the grids describe {sizes.sum()}")
        offsets[kind] = (values, np.concatenate([[0], np.cumsum(sizes)]))
    out = []
    for r, media in enumerate(_row_media(cfg, rows, arrays)):
        built = []
        for kind, grid, spg, k in media:
            values, starts = offsets[kind]
            built.append(Media(kind, values[starts[k] : starts[k + 1]], grid, spg))
        loss = None if supervised is None else np.asarray(supervised, bool)[r][keep[r]]
        out.append(make_sample(cfg, rows[r], loss, built))
    return out


def padding_side(attention_mask: np.ndarray) -> Literal["left", "right"]:
    """ "left" when every row's real tokens end the row, "right" when they start it."""
    mask = np.asarray(attention_mask).astype(bool)
    n = mask.sum(-1, keepdims=True)
    col = np.arange(mask.shape[-1])
    if (mask == (col >= mask.shape[-1] - n)).all():
        return "left"
    if (mask == (col < n)).all():
        return "right"
    raise ValueError(
        "attention_mask: every row's real tokens must be contiguous, all at the "
        "left end or all at the right end"
    )


def _assemble_hf(cfg: ModelConfig, arrays: Mapping[str, np.ndarray], supervised, num_patches):
    ids, mask = _ids_and_mask(arrays)
    samples = samples_from_hf(cfg, arrays, supervised)
    slots = max([s.num_slots(cfg) for s in samples] + [0])
    if num_patches is not None:
        if num_patches < slots:
            raise ValueError(
                f"media need {slots} ViT slots per row, over num_patches={num_patches}"
            )
        slots = num_patches
    batch = assemble(
        [[s] for s in samples],
        cfg,
        seq_len=ids.shape[1],
        num_slots=slots,
        padding=padding_side(mask),
    )
    return batch, samples


def batch_from_hf(
    cfg: ModelConfig,
    arrays: Mapping[str, np.ndarray],
    supervised: np.ndarray | None = None,
    *,
    num_patches: int | None = None,
) -> Batch:
    """Processor arrays -> `Batch` with the same [B, L] layout (tokens stay where they are).
    supervised: bool[B, L] (the shift to next-token targets happens in `assemble`).
    num_patches: ViT slots per row (a multiple of window_patches); None = the fewest that fit."""
    return _assemble_hf(cfg, arrays, supervised, num_patches)[0]


def inputs_from_hf(
    cfg: ModelConfig, arrays: Mapping[str, np.ndarray], *, num_patches: int | None = None
) -> tuple[ModelInputs, np.ndarray]:
    """Processor arrays -> (`ModelInputs` in the same [B, L] layout, rope_deltas int64[B, 1])."""
    batch, samples = _assemble_hf(cfg, arrays, None, num_patches)
    return batch.inputs, np.asarray([[s.rope_delta] for s in samples], np.int64).reshape(-1, 1)


def rope_index(
    input_ids: np.ndarray,
    cfg: ModelConfig,
    *,
    attention_mask: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Port of `get_rope_index`: positions int64[3, B, L] (pads 0) and rope_deltas int64[B, 1]
    (largest position + 1 - real tokens). Media are consumed in order across rows; only the
    grids are needed. attention_mask: int[B, L], any padding."""
    arrays = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "image_grid_thw": image_grid_thw,
        "video_grid_thw": video_grid_thw,
        "second_per_grid_ts": second_per_grid_ts,
    }
    ids, mask = _ids_and_mask({k: v for k, v in arrays.items() if v is not None})
    keep = mask.astype(bool)
    rows = [ids[r][keep[r]] for r in range(len(ids))]
    positions = np.zeros((3, *ids.shape), np.int64)
    deltas = np.zeros((len(ids), 1), np.int64)
    media_rows = _row_media(cfg, rows, {k: v for k, v in arrays.items() if v is not None})
    for r, media in enumerate(media_rows):
        videos = [m for m in media if m[0] == "video"]
        pos = sample_rope_positions(
            token_modalities(rows[r], cfg),
            [m[1] for m in media if m[0] == "image"],
            [m[1] for m in videos],
            [m[2] for m in videos] if second_per_grid_ts is not None else None,
            cfg,
        )
        positions[:, r, keep[r]] = pos
        deltas[r, 0] = (pos.max() + 1 if pos.size else 0) - len(rows[r])
    return positions, deltas


def hf_from_samples(
    samples: Sequence[Sample], *, padding: Literal["left", "right"] = "left", pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Samples (one per row) -> processor arrays: ids int64[B, L] padded to the longest, media
    concatenated in order (rows, then appearance); second_per_grid_ts when there are videos."""
    length = max(s.num_tokens for s in samples)
    ids = np.full((len(samples), length), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for r, s in enumerate(samples):
        sl = slice(length - s.num_tokens, length) if padding == "left" else slice(0, s.num_tokens)
        ids[r, sl], mask[r, sl] = s.input_ids, 1
    out = {"input_ids": ids, "attention_mask": mask}
    media = [m for s in samples for m in s.media]
    for kind, pv_key, grid_key in _KINDS.values():
        ms = [m for m in media if m.kind == kind]
        if ms:
            out[pv_key] = np.concatenate([m.patches for m in ms])
            out[grid_key] = np.asarray([m.grid for m in ms], np.int64)
    videos = [m.second_per_grid_t for m in media if m.kind == "video"]
    if videos and None not in videos:
        out["second_per_grid_ts"] = np.asarray(videos, np.float32)
    return out
