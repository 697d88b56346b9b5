"""`ModelInputs`: the fixed-shape arrays the compiled model consumes, and a builder from the
Hugging Face processor's format (`input_ids`, `pixel_values`, `image_grid_thw`, ...)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.indices import layout_slots, rope_index, token_modalities, vision_layout


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """One batch, every shape static.

    tokens: int32[B, L]. segment_ids: int32[B, L], 0 = padding, packed samples 1, 2, ...
    positions: int32[3, B, L] MRoPE (temporal, height, width). vision_index: int32[B, L], the
    merged vision-token slot feeding each position (-1 = text). patches: float32[B, N, 1176] in
    window layout (N = windows x window_patches; N = 0 when the batch has no media).
    vit_positions: int32[B, N, 2]. vit_segment_ids: int32[B, N], 0 = padding slot.
    """

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    vision_index: np.ndarray
    patches: np.ndarray
    vit_positions: np.ndarray
    vit_segment_ids: np.ndarray


def _split_rows(values: np.ndarray | None, grids: list, counts: list[int], merge2: int):
    """Splits concatenated media (pixel rows, grids) into per-row lists, in order."""
    out, g0, p0 = [], 0, 0
    for n_tokens in counts:
        row_grids, seen = [], 0
        while seen < n_tokens:
            row_grids.append(grids[g0])
            seen += int(np.prod(grids[g0])) // merge2
            g0 += 1
        n_patches = sum(int(np.prod(g)) for g in row_grids)
        rows = values[p0 : p0 + n_patches] if values is not None else None
        out.append((row_grids, rows))
        p0 += n_patches
    return out


def inputs_from_hf(
    cfg: ModelConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    pixel_values: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    pixel_values_videos: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
    num_patches: int | None = None,
) -> tuple[ModelInputs, np.ndarray]:
    """Builds `ModelInputs` from processor-format arrays; returns it and rope_deltas int[B, 1].

    Media are assigned to rows in order, as the reference's masked_scatter does. num_patches:
    the per-row ViT slot budget (multiple of window_patches); None = the smallest that fits.
    """
    ids = np.asarray(input_ids, np.int64)
    b, length = ids.shape
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
    merge2 = cfg.vision.merge_unit
    images = [
        tuple(int(v) for v in g) for g in (image_grid_thw if image_grid_thw is not None else [])
    ]
    videos = [
        tuple(int(v) for v in g) for g in (video_grid_thw if video_grid_thw is not None else [])
    ]
    for name, values, grids in (
        ("pixel_values", pixel_values, images),
        ("pixel_values_videos", pixel_values_videos, videos),
    ):
        need = sum(int(np.prod(g)) for g in grids)
        have = 0 if values is None else len(values)
        if need != have:
            raise ValueError(f"{name}: {have} patch rows, but the grids describe {need}")
    mods = token_modalities(ids, cfg) * mask
    img_rows = _split_rows(pixel_values, images, [(m == 1).sum() for m in mods], merge2)
    vid_rows = _split_rows(pixel_values_videos, videos, [(m == 2).sum() for m in mods], merge2)
    positions, deltas = rope_index(
        ids, cfg, attention_mask=mask, image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
    )  # fmt: skip

    row_grids = [ig + vg for (ig, _), (vg, _) in zip(img_rows, vid_rows, strict=True)]
    n = max([layout_slots(g, cfg.vision) for g in row_grids] + [0])
    if num_patches is not None:
        if num_patches < n:
            raise ValueError(f"media need {n} ViT slots per row, over num_patches={num_patches}")
        n = num_patches
    layouts = [vision_layout(g, cfg.vision, num_slots=n) for g in row_grids]
    patches = np.zeros((b, n, cfg.vision.patch_dim), np.float32)
    vit_pos = np.zeros((b, n, 2), np.int32)
    vit_seg = np.zeros((b, n), np.int32)
    vision_index = np.full((b, length), -1, np.int32)
    for row, ((_, ipx), (_, vpx)) in enumerate(zip(img_rows, vid_rows, strict=True)):
        if not n:
            break
        lay = layouts[row]
        parts = [p for p in (ipx, vpx) if p is not None and len(p)]
        pix = np.concatenate(parts) if parts else np.zeros((0, cfg.vision.patch_dim), np.float32)
        real = lay.patch_src >= 0
        patches[row, real] = pix[lay.patch_src[real]]
        vit_pos[row], vit_seg[row] = lay.vit_positions, lay.vit_segment_ids
        n_img_units = (mods[row] == 1).sum()
        vision_index[row, mods[row] == 1] = lay.unit_slot[:n_img_units]
        vision_index[row, mods[row] == 2] = lay.unit_slot[n_img_units:]
    inputs = ModelInputs(
        tokens=ids.astype(np.int32),
        segment_ids=mask.astype(np.int32),
        positions=positions.astype(np.int32),
        vision_index=vision_index,
        patches=patches,
        vit_positions=vit_pos,
        vit_segment_ids=vit_seg,
    )
    return inputs, deltas
