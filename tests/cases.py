"""Whole-model input cases in the Hugging Face processor format (random pixels and text)."""

from __future__ import annotations

import numpy as np

from qwen25vl_jax.config import ModelConfig


def _media(cfg: ModelConfig, grid, video: bool) -> list[int]:
    n = int(np.prod(grid)) // cfg.vision.merge_unit
    pad = cfg.video_token_id if video else cfg.image_token_id
    return [cfg.vision_start_token_id] + [pad] * n + [cfg.vision_end_token_id]


def make_case(cfg: ModelConfig, rows: list[list], seed: int = 0, pad: str = "left") -> dict:
    """rows: per row a list of items: int (that many random text tokens), ("image", (t,h,w)),
    ("video", (t,h,w), second_per_grid_t). Returns processor-format arrays."""
    rng = np.random.default_rng(seed)
    ids_rows, images, videos, spg = [], [], [], []
    for row in rows:
        ids = []
        for item in row:
            if isinstance(item, int):
                ids += rng.integers(0, 200, item).tolist()
            elif item[0] == "image":
                ids += _media(cfg, item[1], False)
                images.append(item[1])
            else:
                ids += _media(cfg, item[1], True)
                videos.append(item[1])
                spg.append(item[2])
        ids_rows.append(ids)
    length = max(len(r) for r in ids_rows)
    input_ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros_like(input_ids)
    for b, ids in enumerate(ids_rows):
        sl = slice(length - len(ids), length) if pad == "left" else slice(0, len(ids))
        input_ids[b, sl], mask[b, sl] = ids, 1
    pd = cfg.vision.patch_dim
    npatch = lambda gs: sum(int(np.prod(g)) for g in gs)  # noqa: E731
    out = {"input_ids": input_ids, "attention_mask": mask}
    if images:
        out["pixel_values"] = rng.standard_normal((npatch(images), pd)).astype(np.float32)
        out["image_grid_thw"] = np.asarray(images, np.int64)
    if videos:
        out["pixel_values_videos"] = rng.standard_normal((npatch(videos), pd)).astype(np.float32)
        out["video_grid_thw"] = np.asarray(videos, np.int64)
        out["second_per_grid_ts"] = np.asarray(spg, np.float32)
    return out


# name -> rows; grids chosen so windows are ragged (llm grids not multiples of the window side).
CASES = {
    "odd_image": [[5, ("image", (1, 10, 14)), 7]],
    "two_images": [[3, ("image", (1, 6, 10)), 4, ("image", (1, 8, 4)), 6]],
    "video_0.5": [[4, ("video", (4, 6, 8), 0.5), 5]],
    "video_0.75": [[4, ("video", (3, 6, 6), 0.75), 5]],
    "video_2.0": [[4, ("video", (2, 10, 6), 2.0), 5]],
    "image_and_video": [[3, ("image", (1, 6, 6)), 2, ("video", (2, 4, 6), 0.75), 4]],
    "batch2_left_pad": [[3, ("image", (1, 6, 10)), 9], [2, ("image", (1, 4, 4)), 3]],
    "text_only": [[17], [9]],
}
