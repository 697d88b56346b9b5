"""Host-side (NumPy) image and video preprocessing for Qwen2.5-VL."""

from qwen25vl_jax.data.video import (
    FPS,
    FPS_MAX_FRAMES,
    FPS_MIN_FRAMES,
    FRAME_FACTOR,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
    VideoDecodeError,
    decode_video,
    preprocess_video,
    sample_frames,
    write_video,
)
from qwen25vl_jax.data.vision import (
    CLIP_MEAN,
    CLIP_STD,
    MAX_PIXELS,
    MIN_PIXELS,
    preprocess_image,
    scale_boxes,
    smart_resize,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FPS",
    "FPS_MAX_FRAMES",
    "FPS_MIN_FRAMES",
    "FRAME_FACTOR",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "VIDEO_TOTAL_PIXELS",
    "VideoDecodeError",
    "decode_video",
    "preprocess_image",
    "preprocess_video",
    "sample_frames",
    "scale_boxes",
    "smart_resize",
    "write_video",
]
