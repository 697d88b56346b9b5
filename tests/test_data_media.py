"""Image/video preprocessing (qwen25vl_jax.data) against transformers and qwen-vl-utils.

References:
- smart_resize, preprocess_image: transformers' own ``smart_resize`` and
  ``Qwen2VLImageProcessorPil`` (the PIL/NumPy backend, which runs without torchvision).
- sample_frames: a literal port of qwen-vl-utils ``smart_nframes`` (below) + torch.linspace.
- preprocess_video: transformers' PIL backend per frame (resize/rescale/normalize) and a
  literal torch port of transformers' Qwen2VLVideoProcessor.patchify (that module imports
  torchvision, which is not installed).
"""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_pil

from qwen25vl_jax.data import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VideoDecodeError,
    decode_video,
    preprocess_image,
    preprocess_video,
    sample_frames,
    scale_boxes,
    smart_resize,
    write_video,
)


def _rand_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


# ----------------------------------------------------------------------------- smart_resize


def test_smart_resize_matches_transformers_on_many_sizes():
    sides = [1, 2, 13, 14, 15, 27, 28, 29, 41, 42, 43, 56, 70, 99, 224, 333, 517, 1000, 4000]
    budgets = [(3136, 12845056), (56 * 56, 28 * 28 * 1280), (128 * 784, 768 * 784), (100, 5000)]
    checked = 0
    for h in sides:
        for w in sides:
            if max(h, w) / min(h, w) > 200:
                continue
            for lo, hi in budgets:
                for factor in (28, 32):
                    want = hf_pil.smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
                    got = smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
                    assert got == want, (h, w, lo, hi, factor)
                    assert got[0] > 0 and got[1] > 0
                    checked += 1
    assert checked > 2000


def test_smart_resize_hand_checked():
    assert smart_resize(224, 224) == (224, 224)
    # round half to even: 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2.
    assert smart_resize(42, 70) == (56, 56)
    # too small: upscale (56*56 minimum).
    assert smart_resize(20, 20) == (56, 56)
    # A side below factor / 2 rounds to 0 in transformers -> upscaling branch (qwen-vl-utils,
    # which clamps to 28 first, would return (28, 2016)).
    assert smart_resize(10, 2000) == (28, 812)
    # too big: 4000 x 4000 -> sqrt(12845056) = 3584 = 128 * 28.
    assert smart_resize(4000, 4000) == (3584, 3584)


def test_smart_resize_aspect_ratio_error():
    assert smart_resize(1, 200) == hf_pil.smart_resize(1, 200, min_pixels=3136, max_pixels=12845056)
    with pytest.raises(ValueError, match="absolute aspect ratio must be smaller than 200"):
        smart_resize(1, 201)
    with pytest.raises(ValueError, match="absolute aspect ratio must be smaller than 200"):
        smart_resize(5000, 20)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("h", "w", "min_pixels", "max_pixels"),
    [
        (50, 77, 3136, 12845056),
        (333, 517, 3136, 12845056),
        (17, 1000, 3136, 12845056),
        (601, 899, 3136, 200_000),  # downscale branch
        (9, 13, 3136, 12845056),  # upscale branch
        (97, 61, 20_000, 40_000),
        (28, 28, 3136, 12845056),  # the odd sizes
        (37, 1000, 3136, 12845056),
        (3000, 20, 3136, 12845056),
        (1080, 1920, 3136, 1_003_520),
    ],
)
def test_preprocess_image_matches_transformers(h, w, min_pixels, max_pixels):
    image = _rand_image(h, w, seed=h * w)
    ref = hf_pil.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    want = ref(image, return_tensors="np")
    pixel_values, grid_thw = preprocess_image(image, min_pixels=min_pixels, max_pixels=max_pixels)
    assert pixel_values.dtype == np.float32 and grid_thw.dtype == np.int64
    assert pixel_values.shape == want["pixel_values"].shape
    assert pixel_values.shape[1] == 1176
    np.testing.assert_array_equal(grid_thw, want["image_grid_thw"][0])
    np.testing.assert_array_equal(pixel_values, want["pixel_values"])  # bitwise


def test_preprocess_image_pil_modes_match_transformers():
    ref = hf_pil.Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    for mode, channels in (("RGBA", 4), ("L", 1), ("RGB", 3)):
        data = _rand_image(45, 71, seed=channels, channels=channels)
        pil = Image.fromarray(data[..., 0] if channels == 1 else data, mode=mode)
        want = ref(pil, return_tensors="np")
        pixel_values, grid_thw = preprocess_image(pil)
        np.testing.assert_array_equal(grid_thw, want["image_grid_thw"][0])
        np.testing.assert_array_equal(pixel_values, want["pixel_values"])  # bitwise


def test_preprocess_image_patch_order_by_hand():
    # 56 x 84 stays 56 x 84: grid (1, 4, 6), rows ordered by 2x2 merge blocks.
    image = _rand_image(56, 84, seed=3)
    pixel_values, grid_thw = preprocess_image(image)
    np.testing.assert_array_equal(grid_thw, [1, 4, 6])
    norm = (image.astype(np.float64) / 255 - [0.48145466, 0.4578275, 0.40821073]) / [
        0.26862954,
        0.26130258,
        0.27577711,
    ]

    def row(pr, pc):  # patch at patch-row pr, patch-col pc -> (C, t=2, 14, 14) flattened
        patch = norm[pr * 14 : pr * 14 + 14, pc * 14 : pc * 14 + 14].transpose(2, 0, 1)
        return np.stack([patch, patch], axis=1).reshape(-1)

    # Block (0, 0) holds patches (0,0), (0,1), (1,0), (1,1); then block (0, 1) starts at (0,2).
    expected_order = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (0, 4)]
    for i, (pr, pc) in enumerate(expected_order):
        np.testing.assert_allclose(pixel_values[i], row(pr, pc), atol=1e-5)
    np.testing.assert_allclose(pixel_values[12], row(2, 0), atol=1e-5)


def test_preprocess_image_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((30, 30, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(np.zeros((30, 30), np.uint8))


def test_scale_boxes_and_points():
    boxes = np.array([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 640.0, 480.0]])
    out = scale_boxes(boxes, from_hw=(480, 640), to_hw=(476, 644))
    np.testing.assert_allclose(
        out[0], [10 * 644 / 640, 20 * 476 / 480, 110 * 644 / 640, 220 * 476 / 480]
    )
    np.testing.assert_allclose(out[1], [0, 0, 644, 476])
    np.testing.assert_allclose(scale_boxes(out, (476, 644), (480, 640)), boxes)
    points = np.array([[[320, 240]]])  # ints -> float64, any leading shape
    got = scale_boxes(points, (480, 640), (240, 1280))
    assert got.dtype == np.float64 and got.shape == (1, 1, 2)
    np.testing.assert_allclose(got, [[[640.0, 120.0]]])
    with pytest.raises(ValueError):
        scale_boxes(np.zeros((2, 3)), (1, 1), (2, 2))


# ----------------------------------------------------------------------------- sampling


def _smart_nframes_reference(ele: dict, total_frames: int, video_fps: float) -> int:
    """Literal port of qwen-vl-utils vision_process.smart_nframes (Qwen2.5-VL)."""
    factor, fps_default, min_default, max_default = 2, 2.0, 4, 768

    def round_by(n, f):
        return round(n / f) * f

    def ceil_by(n, f):
        return math.ceil(n / f) * f

    def floor_by(n, f):
        return math.floor(n / f) * f

    assert not ("fps" in ele and "nframes" in ele)
    if "nframes" in ele:
        nframes = round_by(ele["nframes"], factor)
    else:
        fps = ele.get("fps", fps_default)
        min_frames = ceil_by(ele.get("min_frames", min_default), factor)
        max_frames = floor_by(ele.get("max_frames", min(max_default, total_frames)), factor)
        nframes = total_frames / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
        nframes = floor_by(nframes, factor)
    if not (factor <= nframes and nframes <= total_frames):
        raise ValueError(f"nframes should in interval [{factor}, {total_frames}], got {nframes}.")
    return nframes


def test_sample_frames_matches_smart_nframes_port():
    checked = 0
    for total in [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 64, 100, 301, 1000, 1801, 20000]:
        for video_fps in [1.0, 5.0, 23.976, 25.0, 29.97, 30.0, 60.0]:
            for ele in (
                {},
                {"fps": 1.0},
                {"fps": 0.5, "min_frames": 5},
                {"fps": 4.0, "max_frames": 33},
                {"fps": 2.0, "max_frames": 1000},
                {"nframes": 7},
                {"nframes": 16},
            ):
                kwargs = dict(ele)  # same keyword names as qwen-vl-utils' ele dict
                try:
                    n = _smart_nframes_reference(ele, total, video_fps)
                except ValueError:
                    with pytest.raises(ValueError, match=r"nframes should in interval \[2, "):
                        sample_frames(total, video_fps, **kwargs)
                    continue
                indices, sampled_fps = sample_frames(total, video_fps, **kwargs)
                assert indices.dtype == np.int64 and indices.shape == (n,)
                ref_idx = torch.linspace(0, total - 1, n).round().long().numpy()
                np.testing.assert_array_equal(indices, ref_idx)
                assert sampled_fps == pytest.approx(n / total * video_fps, rel=1e-12)
                checked += 1
    assert checked > 500


def test_sample_frames_hand_checked():
    indices, sampled = sample_frames(30, 10.0)  # 3 s at 2 fps -> 6 frames
    np.testing.assert_array_equal(indices, [0, 6, 12, 17, 23, 29])
    assert sampled == pytest.approx(2.0)
    indices, sampled = sample_frames(3, 30.0)  # min_frames 4 capped at total 3 -> floor to 2
    np.testing.assert_array_equal(indices, [0, 2])
    assert sampled == pytest.approx(20.0)
    indices, _ = sample_frames(100, 25.0, nframes=5)  # round(2.5) = 2 (half to even) -> 4
    np.testing.assert_array_equal(indices, [0, 33, 66, 99])
    indices, _ = sample_frames(10_000, 30.0)  # 666.7 -> 666 frames, under the 768 cap
    assert len(indices) == 666 and indices[0] == 0 and indices[-1] == 9999


def test_sample_frames_errors():
    with pytest.raises(ValueError, match=r"nframes should in interval \[2, 1\]"):
        sample_frames(1, 30.0)
    with pytest.raises(ValueError, match=r"nframes should in interval \[2, 10\]"):
        sample_frames(10, 30.0, nframes=12)
    with pytest.raises(ValueError, match="either"):
        sample_frames(10, 30.0, fps=2.0, nframes=4)


# ----------------------------------------------------------------------------- video tensors


def _reference_video(frames: np.ndarray, min_pixels: int, max_pixels: float) -> tuple:
    """transformers' PIL per-frame ops + a torch port of Qwen2VLVideoProcessor.patchify."""
    proc = hf_pil.Qwen2VLImageProcessorPil()
    size = hf_pil.SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)
    chw = []
    for frame in frames:
        image = np.moveaxis(frame, -1, 0)
        image = proc.resize(image, size=size, resample=proc.resample, factor=28)
        image = proc.normalize(proc.rescale(image, 1 / 255), proc.image_mean, proc.image_std)
        chw.append(image)
    videos = torch.from_numpy(np.stack(chw))[None]  # (B, T, C, H, W)
    b, t, c, h, w = videos.shape
    if pad := -t % 2:
        videos = torch.cat((videos, videos[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
        t += pad
    gt, gh, gw = t // 2, h // 14, w // 14
    patches = videos.view(b, gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return patches.reshape(gt * gh * gw, c * 2 * 14 * 14).numpy(), np.array([gt, gh, gw])


@pytest.mark.parametrize("num_frames", [3, 4])
def test_preprocess_video_matches_reference(num_frames):
    rng = np.random.default_rng(num_frames)
    frames = rng.integers(0, 256, (num_frames, 61, 93, 3), dtype=np.uint8)
    pixel_values, grid_thw, spg = preprocess_video(frames, fps=2.0, min_pixels=3136)
    want, want_grid = _reference_video(frames, 3136, VIDEO_MAX_PIXELS)
    assert pixel_values.dtype == np.float32 and grid_thw.dtype == np.int64
    np.testing.assert_array_equal(grid_thw, want_grid)
    assert grid_thw[0] == 2  # 3 frames padded to 4
    np.testing.assert_array_equal(pixel_values, want)  # bitwise
    assert spg == pytest.approx(1.0)


def test_preprocess_video_odd_frames_repeat_last():
    frames = np.stack([np.full((56, 56, 3), v, np.uint8) for v in (0, 100, 200)])
    pixel_values, grid_thw, _ = preprocess_video(frames, fps=1.0, min_pixels=3136)
    np.testing.assert_array_equal(grid_thw, [2, 4, 4])
    rows = pixel_values.reshape(2, 16, 3, 2, 14, 14)  # (gt, tokens, C, tps, ps, ps)
    np.testing.assert_array_equal(rows[1, :, :, 0], rows[1, :, :, 1])  # frame 3 repeated
    assert not np.allclose(rows[0, :, :, 0], rows[0, :, :, 1])
    single, _ = preprocess_image(frames[2], min_pixels=3136)
    np.testing.assert_array_equal(pixel_values[16:], single)


def test_preprocess_video_budget_and_second_per_grid():
    frames = np.zeros((8, 480, 640, 3), np.uint8)
    _, grid_thw, spg = preprocess_video(frames, fps=4.0)
    # default per-frame budget VIDEO_MAX_PIXELS = 768 * 28^2
    assert (grid_thw[1] * 14) * (grid_thw[2] * 14) <= VIDEO_MAX_PIXELS
    assert tuple(grid_thw * [1, 14, 14]) == (
        4,
        *smart_resize(480, 640, max_pixels=VIDEO_MAX_PIXELS, min_pixels=VIDEO_MIN_PIXELS),
    )
    assert spg == pytest.approx(0.5)
    # qwen-vl-utils fetch_video: max(min(768*784, 200_000 / 8 * 2), int(128*784 * 1.05)).
    total = 200_000
    budget = max(min(VIDEO_MAX_PIXELS, total / 8 * 2), int(VIDEO_MIN_PIXELS * 1.05))
    assert budget == int(VIDEO_MIN_PIXELS * 1.05)
    _, grid_thw, _ = preprocess_video(frames, fps=2.0, total_pixels=total)
    want = smart_resize(480, 640, min_pixels=VIDEO_MIN_PIXELS, max_pixels=budget)
    assert tuple(grid_thw[1:] * 14) == want
    assert want != smart_resize(480, 640, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)


# ----------------------------------------------------------------------------- files


@pytest.fixture(scope="module", params=["one_gop", "gop4"])
def gray_video(request, tmp_path_factory):
    """30 frames at 10 fps; frame i is uniformly gray level 8 * i (lossless x264 if present).

    "gop4" puts a keyframe every 4 frames so that seeking to start_s really moves.
    """
    path = tmp_path_factory.mktemp(request.param) / "gray.mp4"
    frames = np.stack([np.full((48, 64, 3), 8 * i, np.uint8) for i in range(30)])
    x264 = "libx264" in av.codecs_available
    options = {"qp": "0"} if x264 else {}
    if request.param == "gop4":
        options["g"] = "4"
    write_video(path, frames, 10.0, codec="libx264" if x264 else "mpeg4", options=options)
    return path


def _frame_ids(frames: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 8) for f in frames]


def test_decode_video_round_trip(gray_video):
    frames, sampled_fps = decode_video(gray_video)  # 3 s at 2 fps -> 6 frames
    assert frames.dtype == np.uint8 and frames.shape == (6, 48, 64, 3)
    assert _frame_ids(frames) == [0, 6, 12, 17, 23, 29]
    assert sampled_fps == pytest.approx(2.0)
    frames, _ = decode_video(gray_video, nframes=10)
    assert _frame_ids(frames) == list(np.linspace(0, 29, 10).round().astype(int))


def test_decode_video_start_end(gray_video):
    # [1.0, 2.0] s holds frames 10..20 (11 frames, both ends inclusive); 4 of them sampled.
    frames, sampled_fps = decode_video(gray_video, nframes=4, start_s=1.0, end_s=2.0)
    assert _frame_ids(frames) == [10, 13, 17, 20]
    assert sampled_fps == pytest.approx(4 / 11 * 10)
    # from 1.5 s to the end: frames 15..29 (15 frames, 1.5 s) -> fps rule gives 3 -> 2 frames
    # would be below min_frames 4, so 4.
    frames, _ = decode_video(gray_video, start_s=1.5)
    assert _frame_ids(frames) == [15, 20, 24, 29]
    frames, _ = decode_video(gray_video, end_s=0.5, fps=4.0)  # frames 0..5 -> 2.4 -> 4
    assert _frame_ids(frames) == [0, 2, 3, 5]
    with pytest.raises(VideoDecodeError, match="gray.mp4"):
        decode_video(gray_video, start_s=10.0)


def test_decode_video_errors(tmp_path):
    bad = tmp_path / "corrupt_clip.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="corrupt_clip.mp4"):
        decode_video(bad)
    with pytest.raises(FileNotFoundError, match="missing_clip.mp4"):
        decode_video(tmp_path / "missing_clip.mp4")
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 5.0)
