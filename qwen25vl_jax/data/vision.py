"""Qwen2.5-VL image preprocessing on the host (NumPy + PIL, no JAX).

Reproduces transformers' Qwen2-VL image processor (the PIL/NumPy "slow" path, which is what
the released checkpoints were trained with): smart_resize to a multiple of
``patch_size * merge_size``, PIL bicubic resize, rescale by 1/255, CLIP normalisation, the
single image repeated to ``temporal_patch_size`` frames, and the patch flattening order the
vision tower expects. ``patchify`` and ``normalize`` are shared with the video path.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# OpenAI CLIP statistics, as transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Defaults of the released Qwen2.5-VL preprocessor_config.json (= qwen-vl-utils MIN/MAX_PIXELS).
MIN_PIXELS = 56 * 56  # 3136 = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28  # 12845056
MAX_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    *,
    factor: int = 28,
    min_pixels: int | float = MIN_PIXELS,
    max_pixels: int | float = MAX_PIXELS,
) -> tuple[int, int]:
    """Target (height, width) of an image: both sides multiples of ``factor``, area within
    [min_pixels, max_pixels] (up to the factor rounding), aspect ratio kept as well as possible.

    Exactly transformers' ``qwen2_vl.image_processing_qwen2_vl.smart_resize``. Python's
    ``round`` rounds halves to even (e.g. 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2); the reference
    relies on that too.

    Difference from qwen-vl-utils' ``vision_process.smart_resize`` (we follow transformers):
    qwen-vl-utils first clamps each rounded side to ``max(factor, ...)``, transformers does not.
    A side shorter than factor / 2 therefore rounds to 0 in transformers, the area becomes 0 <
    min_pixels and the *upscaling* branch runs, so no zero side is ever returned while
    min_pixels > 0, but the result can differ: (10, 2000) gives (28, 812) here and (28, 2016) in
    qwen-vl-utils. The pre-2.5 qwen-vl-utils also lacked the ``max(factor, ...)`` in the
    downscaling branch, which transformers and current qwen-vl-utils both have.

    Raises:
        ValueError: "absolute aspect ratio must be smaller than 200, got ..." if
            max(h, w) / min(h, w) > 200.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"image sides must be positive, got height={height}, width={width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """uint8[H, W, 3] from an RGB uint8 array or any PIL image.

    PIL images with transparency are composited onto white, as transformers' ``convert_to_rgb``
    (qwen-vl-utils' ``to_rgb`` pastes RGBA with the alpha as mask, which can differ by one
    level in rounding; only RGBA inputs are affected).
    """
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8[H, W, 3] RGB array, got dtype={array.dtype} shape={array.shape}"
        )
    return array


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bicubic resize (antialiased on downscaling) of uint8[H, W, 3] to uint8[height, width, 3].

    Same call as transformers' PIL backend: ``Image.resize((w, h), BICUBIC)`` on the uint8
    image, no reducing_gap. A no-op resize still goes through PIL, exactly like the reference.
    """
    resized = Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8[..., 3] -> float32[..., 3]: ``(x / 255 - CLIP_MEAN) / CLIP_STD``.

    Same arithmetic as transformers' NumPy ``rescale`` + ``normalize`` so results are bitwise
    equal: the 1/255 product in float64, cast to float32, then mean/std in float32.
    """
    scaled = (images.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    return (scaled - mean) / std


def patchify(
    frames: np.ndarray, *, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten float32[T, H, W, C] frames into vision-tower patches.

    T must be a multiple of temporal_patch_size, H and W multiples of patch_size * merge_size.
    Order as transformers' Qwen2VLImageProcessor: [gt, tps, C, gh/m, m, ps, gw/m, m, ps]
    transposed by (0, 3, 6, 4, 7, 2, 1, 5, 8), i.e. rows run over (t, h-block, w-block, m_h, m_w)
    so that each merge_size**2 consecutive rows form one merged token, and each row is
    (C, tps, ps, ps).

    Returns:
        pixel_values float32[gt * gh * gw, C * tps * ps * ps], grid_thw int64[3] = (gt, gh, gw).
    """
    t, h, w, c = frames.shape
    ps, m, tps = patch_size, merge_size, temporal_patch_size
    if t % tps or h % (ps * m) or w % (ps * m):
        raise ValueError(
            f"frames of shape {frames.shape} do not tile into temporal_patch_size={tps}, "
            f"patch_size={ps}, merge_size={m}"
        )
    gt, gh, gw = t // tps, h // ps, w // ps
    chw = np.moveaxis(frames, -1, 1)  # [T, C, H, W], the reference's channel-first layout
    patches = chw.reshape(gt, tps, c, gh // m, m, ps, gw // m, m, ps)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = np.ascontiguousarray(patches.reshape(gt * gh * gw, c * tps * ps * ps))
    return pixel_values.astype(np.float32, copy=False), np.array([gt, gh, gw], dtype=np.int64)


def preprocess_image(
    image: np.ndarray | Image.Image,
    *,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (pixel_values float32[N, C*tps*ps*ps], grid_thw int64[3]).

    ``image`` is uint8[H, W, 3] RGB or a PIL image (converted to RGB, alpha over white).
    With defaults the row width is 3 * 2 * 14 * 14 = 1176, grid_thw = (1, h / 14, w / 14) and
    N = h * w / 196 for the smart_resize size (h, w).
    """
    rgb = to_rgb_array(image)
    height, width = smart_resize(
        rgb.shape[0],
        rgb.shape[1],
        factor=patch_size * merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    frame = normalize(resize_bicubic(rgb, height, width))
    # A still image is a clip of temporal_patch_size identical frames.
    frames = np.broadcast_to(frame[None], (temporal_patch_size, *frame.shape))
    return patchify(
        frames,
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
    )


def scale_boxes(
    boxes: np.ndarray, from_hw: tuple[float, float], to_hw: tuple[float, float]
) -> np.ndarray:
    """Map pixel coordinates from an image of size ``from_hw`` to one of size ``to_hw``.

    ``boxes`` is float[..., 4] as (x1, y1, x2, y2) or float[..., 2] points as (x, y); x scales by
    to_w / from_w and y by to_h / from_h. Qwen2.5-VL grounds in absolute pixels of the *resized*
    image, so use (original_hw -> resized_hw) for targets and (resized_hw -> original_hw) to
    read predictions back. Returns a new float array (float64 for integer input).
    """
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    if boxes.ndim == 0 or boxes.shape[-1] not in (2, 4):
        raise ValueError(f"expected [..., 4] boxes or [..., 2] points, got shape {boxes.shape}")
    (from_h, from_w), (to_h, to_w) = from_hw, to_hw
    xy_scale = np.array([to_w / from_w, to_h / from_h], dtype=boxes.dtype)
    scale = np.tile(xy_scale, boxes.shape[-1] // 2)
    return boxes * scale
