"""Whole-model input cases (random pixels and text): as samples, and in the Hugging Face
processor format (the same samples through `hf_format.hf_from_samples`)."""

from __future__ import annotations

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.hf_format import hf_from_samples
from qwen25vl_jax.data.media import Media
from qwen25vl_jax.data.sample import Sample, make_sample


def _media(cfg: ModelConfig, grid, video: bool) -> list[int]:
    n = int(np.prod(grid)) // cfg.vision.merge_unit
    pad = cfg.video_token_id if video else cfg.image_token_id
    return [cfg.vision_start_token_id] + [pad] * n + [cfg.vision_end_token_id]


def make_samples(cfg: ModelConfig, rows: list[list], seed: int = 0) -> list[Sample]:
    """rows: per row a list of items: int (that many random text tokens), ("image", (t,h,w)),
    ("video", (t,h,w), second_per_grid_t). Returns one `Sample` per row (nothing supervised).
    Draws text for every row first, then the pixels of all images, then of all videos."""
    rng = np.random.default_rng(seed)
    ids_rows, items = [], []  # items: (row, kind, grid, second_per_grid_t)
    for r, row in enumerate(rows):
        ids = []
        for item in row:
            if isinstance(item, int):
                ids += rng.integers(0, 200, item).tolist()
            else:
                ids += _media(cfg, item[1], item[0] == "video")
                items.append((r, item[0], item[1], item[2] if item[0] == "video" else None))
        ids_rows.append(ids)
    built: dict[int, Media] = {}  # item index -> its Media
    for kind in ("image", "video"):
        of_kind = [k for k, it in enumerate(items) if it[1] == kind]
        sizes = [int(np.prod(items[k][2])) for k in of_kind]
        pixels = rng.standard_normal((sum(sizes), cfg.vision.patch_dim)).astype(np.float32)
        for k, start, size in zip(of_kind, np.cumsum([0] + sizes), sizes):
            built[k] = Media(kind, pixels[start : start + size], items[k][2], items[k][3])
    media = [[built[k] for k, it in enumerate(items) if it[0] == r] for r in range(len(rows))]
    return [make_sample(cfg, ids, None, m) for ids, m in zip(ids_rows, media, strict=True)]


def make_case(cfg: ModelConfig, rows: list[list], seed: int = 0, pad: str = "left") -> dict:
    """`make_samples`' rows as processor-format arrays, padded on the `pad` side with 0."""
    return hf_from_samples(make_samples(cfg, rows, seed), padding=pad)


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
