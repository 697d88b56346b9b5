"""Host-side (NumPy) index maps: every data-dependent index, computed once per sample.

- `vision_layout`: the ViT's window layout for one row's images/videos: which patch sits in
  which slot, its 2-D rope position, its full-attention segment, and where each merge unit lands.
- `sample_rope_positions`: the 3-D MRoPE positions of one sample with absolute-time alignment
  (the inner loop of transformers' `get_rope_index`; the batched port over processor arrays,
  `rope_index`, is in `hf_format.py`), the modality of each token derived from the token ids.

Reference: transformers `models/qwen2_5_vl/modeling_qwen2_5_vl.py` and `vision_utils.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from qwen25vl_jax.config import ModelConfig, VisionConfig


def vision_rope_positions(grid_thw: Sequence[int], merge: int) -> np.ndarray:
    """int64[t*h*w, 2]: (row, column) of every patch of one image/video, in the reference's
    patch order (frames, then merge units in raster order, then the 2x2 patches of a unit)."""
    t, h, w = (int(v) for v in grid_thw)
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hpos = hpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hpos, wpos], axis=-1), (t, 1))


def window_units(grid_thw: Sequence[int], cfg: VisionConfig) -> np.ndarray:
    """The reference's window partition of one image/video: int64[windows, side^2], each row a
    window's merge-unit indices in the reference's order, real units first, -1 padding after.

    Windows tile each frame's merge-unit grid in raster order; border windows are ragged.
    """
    t, h, w = (int(v) for v in grid_thw)
    m, side = cfg.spatial_merge_size, cfg.window_merge_side
    gh, gw = h // m, w // m
    ph, pw = -(-gh // side) * side, -(-gw // side) * side
    units = np.full((t, ph, pw), -1, np.int64)
    units[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
    win = units.reshape(t, ph // side, side, pw // side, side).transpose(0, 1, 3, 2, 4)
    win = win.reshape(-1, side * side)
    order = np.argsort(win < 0, axis=1, kind="stable")  # real units first, order kept
    return np.take_along_axis(win, order, axis=1)


def layout_slots(grids: Sequence[Sequence[int]], cfg: VisionConfig) -> int:
    """Patch slots the window layout of these media needs: windows x window_patches."""
    m, side = cfg.spatial_merge_size, cfg.window_merge_side
    windows = sum(int(t) * -(-int(h) // m // side) * -(-int(w) // m // side) for t, h, w in grids)
    return windows * cfg.window_patches


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """One sample's ViT inputs in window layout, N = windows * window_patches slots.

    patch_src: int64[N] index into the sample's patches (reference order, media concatenated),
        -1 for padding. vit_positions: int32[N, 2]. vit_segment_ids: int32[N], one id per image
        or video frame (1-based), 0 for padding. unit_slot: int64[U], for each merge unit in
        reference order, its merged-token slot (slot u = patches 4u..4u+3 of the layout).
    """

    patch_src: np.ndarray
    vit_positions: np.ndarray
    vit_segment_ids: np.ndarray
    unit_slot: np.ndarray

    @property
    def num_slots(self) -> int:
        return len(self.patch_src)


def vision_layout(
    grids: Sequence[Sequence[int]], cfg: VisionConfig, *, num_slots: int | None = None
) -> VisionLayout:
    """Builds the window layout of one sample whose media have grids `grids` ([t, h, w] each).

    num_slots: pad the layout to this many patch slots (a multiple of `cfg.window_patches`);
    None = the minimum. Raises ValueError if the media do not fit.
    """
    s, mu, merge = cfg.window_patches, cfg.merge_unit, cfg.spatial_merge_size
    src, pos, seg, unit_slot = [], [], [], []
    patch_base = slot_base = segment = 0
    for grid in grids:
        t, h, w = (int(v) for v in grid)
        if h % merge or w % merge:
            raise ValueError(f"grid {tuple(grid)} not divisible by spatial_merge_size {merge}")
        frame_units = (h // merge) * (w // merge)
        units = window_units(grid, cfg)  # [windows, side^2], -1 = padding
        real = units >= 0
        patches = np.where(real[..., None], units[..., None] * mu + np.arange(mu), -1)
        patches = patches.reshape(len(units), s)  # [windows, S]
        ok = patches >= 0
        src.append(np.where(ok, patches + patch_base, -1).reshape(-1))
        rope = vision_rope_positions(grid, merge)
        pos.append(np.where(ok[..., None], rope[np.maximum(patches, 0)], 0).reshape(-1, 2))
        frame = units[:, 0] // frame_units  # windows never straddle frames
        seg.append(np.where(ok, segment + frame[:, None] + 1, 0).reshape(-1))
        slots = np.zeros(t * frame_units, np.int64)
        slots[units[real]] = slot_base + np.flatnonzero(real.reshape(-1))
        unit_slot.append(slots)
        segment += t
        patch_base += t * h * w
        slot_base += len(units) * units.shape[1]
    n = slot_base * mu
    if num_slots is not None:
        if num_slots % s:
            raise ValueError(f"num_slots {num_slots} is not a multiple of window_patches {s}")
        if n > num_slots:
            raise ValueError(f"media need {n} patch slots, over the budget of {num_slots}")
        pad = num_slots - n
        src.append(np.full(pad, -1, np.int64))
        pos.append(np.zeros((pad, 2), np.int64))
        seg.append(np.zeros(pad, np.int64))
    return VisionLayout(
        patch_src=_concat(src, (0,)).astype(np.int64),
        vit_positions=_concat(pos, (0, 2)).astype(np.int32),
        vit_segment_ids=_concat(seg, (0,)).astype(np.int32),
        unit_slot=_concat(unit_slot, (0,)),
    )


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, np.int64)


def token_modalities(input_ids: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """int[...] 0 text, 1 image pad, 2 video pad: transformers 5's `mm_token_type_ids`."""
    ids = np.asarray(input_ids)
    return np.where(ids == cfg.image_token_id, 1, np.where(ids == cfg.video_token_id, 2, 0))


def modality_runs(values: np.ndarray):
    """(value, start, end) for each run of equal consecutive values."""
    if len(values) == 0:
        return
    edges = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(values)]])
    for a, b in zip(starts, ends, strict=True):
        yield int(values[a]), int(a), int(b)


def sample_rope_positions(
    modalities: np.ndarray,
    image_grids: Sequence[Sequence[int]],
    video_grids: Sequence[Sequence[int]],
    second_per_grid_ts: Sequence[float] | None,
    cfg: ModelConfig,
) -> np.ndarray:
    """int64[3, n]: the 3-D positions of one unpadded sequence (get_rope_index's inner loop).

    Text advances all three axes by 1 per token. An image/video of llm grid (t, h, w) takes
    positions (start + t_index, start + row, start + col) with t_index = trunc(frame *
    tokens_per_second * second_per_grid_t) for videos (float32 maths as the reference), 0 for
    images; the next token then starts at start + max(h, w), or after a video with
    `cfg.position_after_video == "max"` at its largest position + 1.
    """
    merge, tps = cfg.vision.spatial_merge_size, cfg.vision.tokens_per_second
    grids = {1: iter(image_grids), 2: iter(video_grids)}
    spg = iter(second_per_grid_ts if second_per_grid_ts is not None else [])
    out, cur = [], 0
    for kind, a, b in modality_runs(np.asarray(modalities)):
        if kind == 0:
            out.append(np.broadcast_to(np.arange(b - a) + cur, (3, b - a)))
            cur += b - a
            continue
        left = b - a
        while left > 0:  # a run may hold several media placed back to back
            try:
                t, h, w = (int(v) for v in next(grids[kind]))
            except StopIteration:
                raise ValueError(
                    f"more {'image' if kind == 1 else 'video'} tokens than grids"
                ) from None
            gh, gw = h // merge, w // merge
            if kind == 2 and second_per_grid_ts is not None:
                interval = np.float32(tps) * np.float32(next(spg))
                t_index = (np.arange(t, dtype=np.float32) * interval).astype(np.int64)
            elif kind == 2:
                t_index = np.arange(t) * tps
            else:
                t_index = np.zeros(t, np.int64)
            tt, hh, ww = np.meshgrid(t_index, np.arange(gh), np.arange(gw), indexing="ij")
            out.append(np.stack([tt, hh, ww]).reshape(3, -1) + cur)
            if kind == 2 and cfg.position_after_video == "max":
                cur = int(out[-1].max()) + 1
            else:  # images: the same either way
                cur += max(gh, gw)
            left -= t * gh * gw
        if left < 0:
            raise ValueError("media token run does not match the grids' token counts")
    return np.concatenate(out, axis=1) if out else np.zeros((3, 0), np.int64)
