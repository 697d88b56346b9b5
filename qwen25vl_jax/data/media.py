"""`Media`: one image or video as the model takes it (patches in the reference's order, its grid,
its timing), and the two ways to make one from decoded pixels."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from qwen25vl_jax.config import VisionConfig
from qwen25vl_jax.data.video import preprocess_video
from qwen25vl_jax.data.vision import preprocess_image


@dataclasses.dataclass(frozen=True)
class Media:
    """One preprocessed image or video.

    kind: "image" or "video". patches: float32[t * h * w, patch_dim], the processor's
    `pixel_values` rows of this medium (reference patch order). grid: (t, h, w) in patches.
    second_per_grid_t: seconds per temporal patch (videos; None for images, or a video whose
    timing is unknown: its temporal positions then advance `tokens_per_second` per grid step).
    original_hw: (height, width) of the source before resizing, when known (grounding).
    """

    kind: Literal["image", "video"]
    patches: np.ndarray
    grid: tuple[int, int, int]
    second_per_grid_t: float | None = None
    original_hw: tuple[int, int] | None = None

    def __post_init__(self):
        if self.kind not in ("image", "video"):
            raise ValueError(f"media kind must be 'image' or 'video', got {self.kind!r}")
        grid = tuple(int(v) for v in np.asarray(self.grid).reshape(-1))
        if len(grid) != 3:
            raise ValueError(f"{self.kind} grid must be (t, h, w), got {grid}")
        patches = np.asarray(self.patches, np.float32)
        if patches.ndim != 2 or len(patches) != int(np.prod(grid)):
            raise ValueError(
                f"{self.kind} of grid {grid} needs {int(np.prod(grid))} patch rows, got an "
                f"array of shape {patches.shape}"
            )
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "patches", patches)
        if self.second_per_grid_t is not None:
            object.__setattr__(self, "second_per_grid_t", float(self.second_per_grid_t))

    def num_tokens(self, merge_unit: int) -> int:
        """LLM tokens of this medium: t * h * w / merge_unit (the merger's 2x2 units)."""
        return int(np.prod(self.grid)) // merge_unit

    def resized_hw(self, patch_size: int) -> tuple[int, int]:
        """(height, width) in pixels of the resized frames the model sees."""
        return self.grid[1] * patch_size, self.grid[2] * patch_size

    @property
    def duration(self) -> float | None:
        """Seconds a video covers (t * second_per_grid_t); None for images / unknown timing."""
        if self.second_per_grid_t is None:
            return None
        return self.grid[0] * self.second_per_grid_t


def _geometry(vision: VisionConfig) -> dict[str, int]:
    return dict(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
    )


def image_media(image, vision: VisionConfig, *, min_pixels: int, max_pixels: int) -> Media:
    """A PIL image / uint8[H, W, 3] array -> `Media` (smart-resized into the pixel budget).
    ValueError for sizes `smart_resize` rejects (e.g. aspect ratio over 200)."""
    patches, grid = preprocess_image(
        image, min_pixels=min_pixels, max_pixels=max_pixels, **_geometry(vision)
    )
    hw = (image.height, image.width) if hasattr(image, "height") else np.shape(image)[:2]
    return Media("image", patches, grid, None, tuple(int(v) for v in hw))


def video_media(
    frames: np.ndarray,
    fps: float,
    vision: VisionConfig,
    *,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int | None = None,
) -> Media:
    """Sampled frames uint8[T, H, W, 3] at `fps` -> `Media` (second_per_grid_t from the
    sampled fps, as the reference)."""
    patches, grid, spg = preprocess_video(
        frames,
        fps=fps,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        total_pixels=total_pixels,
        **_geometry(vision),
    )
    return Media("video", patches, grid, spg, tuple(int(v) for v in np.shape(frames)[1:3]))
