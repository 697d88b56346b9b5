"""Qwen2.5-VL video sampling, decoding and preprocessing on the host (NumPy + PIL + PyAV).

Frame-count rule and per-frame pixel budget follow qwen-vl-utils' ``vision_process.py``
(``smart_nframes`` / ``fetch_video``), the pipeline the released models were trained with;
resizing, normalisation and the patch order are the image path's (``vision.py``).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

from qwen25vl_jax.data.vision import normalize, patchify, resize_bicubic, smart_resize

FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
# qwen-vl-utils: 90% of a 128K-token context. It reads an override from the environment
# variable (sic) VIDEO_MAX_PIXELS at import; we keep the constant and take ``total_pixels``.
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; the message names the file."""


def _round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def sample_frames(
    total_frames: int,
    video_fps: float,
    *,
    fps: float | None = None,
    nframes: int | None = None,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int = FPS_MAX_FRAMES,
) -> tuple[np.ndarray, float]:
    """Which of ``total_frames`` frames (at ``video_fps``) to feed the model.

    Count as qwen-vl-utils ``smart_nframes``: ``nframes`` rounded to FRAME_FACTOR if given, else
    ``total / video_fps * fps`` clamped to [ceil2(min_frames), floor2(min(max_frames, total))]
    and to total, then floored to FRAME_FACTOR. (qwen-vl-utils only takes min(FPS_MAX_FRAMES,
    total) when max_frames is not given; flooring commutes with min, so the result is the same.)

    Returns:
        indices int64[n] = ``linspace(0, total - 1, n).round()`` (round half to even, as
        torch.round), and sampled_fps = n / total * video_fps.

    Raises:
        ValueError: "nframes should in interval [2, total], ..." when no valid count exists, or
            if both fps and nframes are given.
    """
    if fps is not None and nframes is not None:
        raise ValueError("Only accept either `fps` or `nframes`")
    if nframes is not None:
        n = _round_by_factor(nframes, FRAME_FACTOR)
    else:
        fps = FPS if fps is None else fps
        lo = _ceil_by_factor(min_frames, FRAME_FACTOR)
        hi = _floor_by_factor(min(max_frames, total_frames), FRAME_FACTOR)
        wanted = total_frames / video_fps * fps
        n = _floor_by_factor(min(max(wanted, lo), hi, total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(
            f"nframes should in interval [{FRAME_FACTOR}, {total_frames}], but got {n}."
        )
    indices = np.linspace(0, total_frames - 1, n).round().astype(np.int64)
    return indices, n / max(total_frames, 1e-6) * video_fps


def preprocess_video(
    frames: np.ndarray,
    *,
    fps: float,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    total_pixels: int | None = None,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sampled frames uint8[T, H, W, 3] at ``fps`` -> model inputs.

    All frames are resized to one smart_resize size (PIL bicubic, like the image path; the
    qwen-vl-utils file path uses torchvision's antialiased bicubic on uint8 tensors, which can
    differ by a level or so per pixel). With ``total_pixels`` the per-frame budget is that of
    qwen-vl-utils ``fetch_video``: ``min(max_pixels, max(min(VIDEO_MAX_PIXELS, total_pixels / T
    * FRAME_FACTOR), int(min_pixels * 1.05)))``. (qwen-vl-utils applies the caller's max_pixels
    only when given; this differs only for min_pixels > VIDEO_MAX_PIXELS / 1.05.) An odd T is
    padded by repeating the last frame to a multiple of temporal_patch_size, as transformers.

    Returns:
        pixel_values float32[gt * gh * gw, C * tps * ps * ps] (width 1176 by default),
        grid_thw int64[3] = (ceil(T / tps), h / ps, w / ps), and second_per_grid_t =
        temporal_patch_size / fps (float; Qwen2.5-VL's ``second_per_grid_ts`` entry).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8[T, H, W, 3] frames, got dtype={frames.dtype} shape={frames.shape}"
        )
    num_frames, height, width, _ = frames.shape
    if num_frames == 0:
        raise ValueError("preprocess_video needs at least one frame")
    if total_pixels is not None:
        budget = max(
            min(VIDEO_MAX_PIXELS, total_pixels / num_frames * FRAME_FACTOR),
            int(min_pixels * 1.05),
        )
        max_pixels = min(max_pixels, budget)
    new_h, new_w = smart_resize(
        height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    resized = np.stack([resize_bicubic(frame, new_h, new_w) for frame in frames])
    if pad := -num_frames % temporal_patch_size:
        resized = np.concatenate([resized, np.repeat(resized[-1:], pad, axis=0)])
    pixel_values, grid_thw = patchify(
        normalize(resized),
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
    )
    return pixel_values, grid_thw, temporal_patch_size / fps


def _open(path: str | os.PathLike):
    import av

    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {os.fspath(path)}")
    try:
        container = av.open(os.fspath(path))
    except av.FFmpegError as err:
        raise VideoDecodeError(f"cannot open video file {os.fspath(path)}: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"no video stream in file {os.fspath(path)}")
    return container


def _clip_pts(container, stream, start_s: float | None, end_s: float | None) -> list[int]:
    """Sorted pts of the decoded frames whose time (from the stream start) is in [start, end].

    Decodes without converting to RGB.
    """
    offset = stream.start_time or 0
    if start_s is not None and start_s > 0:
        # Seek to the keyframe at or before start (backward=True), then filter by time.
        container.seek(offset + int(start_s / stream.time_base), backward=True, stream=stream)
    pts = []
    for frame in container.decode(stream):
        if frame.pts is None:
            raise VideoDecodeError("frame without a timestamp")
        seconds = (frame.pts - offset) * stream.time_base
        if end_s is not None and seconds > end_s:
            break  # decoders emit frames in presentation order
        if start_s is None or seconds >= start_s:
            pts.append(frame.pts)
    return sorted(pts)


def decode_video(
    path: str | os.PathLike,
    *,
    fps: float | None = FPS,
    nframes: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int = FPS_MAX_FRAMES,
) -> tuple[np.ndarray, float]:
    """Decode and sample a video file with PyAV.

    Frames whose timestamp (seconds from the stream's start) lies in [start_s, end_s] form the
    clip, as torchvision.io.read_video(start_pts, end_pts, pts_unit="sec") which qwen-vl-utils
    calls; the clip is then sampled with ``sample_frames(len(clip), stream_fps, ...)``. An
    explicit ``nframes`` overrides ``fps``. Two decode passes (count, then convert only the
    chosen frames) keep memory at the sampled frames, not the whole clip.

    Returns:
        frames uint8[n, H, W, 3] RGB and sampled_fps (float).

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: it cannot be opened or decoded, or holds no video stream / no frame in
            the time range. Both messages name the file.
        ValueError: from sample_frames when no valid frame count exists.
    """
    import av

    name = os.fspath(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoDecodeError(f"unknown frame rate in video file {name}")
        try:
            clip = _clip_pts(container, stream, start_s, end_s)
        except (av.FFmpegError, VideoDecodeError) as err:
            raise VideoDecodeError(f"cannot decode video file {name}: {err}") from err
        if not clip:
            raise VideoDecodeError(f"no frame of video file {name} in [{start_s}, {end_s}] s")
        indices, sampled_fps = sample_frames(
            len(clip),
            float(rate),
            fps=None if nframes is not None else fps,
            nframes=nframes,
            min_frames=min_frames,
            max_frames=max_frames,
        )
        wanted = [clip[i] for i in indices]
        wanted_set, last = set(wanted), wanted[-1]
        by_pts: dict[int, np.ndarray] = {}
        try:
            offset = stream.start_time or 0
            container.seek(max(wanted[0], offset), backward=True, stream=stream)
            for frame in container.decode(stream):
                if frame.pts in wanted_set and frame.pts not in by_pts:
                    by_pts[frame.pts] = frame.to_ndarray(format="rgb24")
                if len(by_pts) == len(wanted_set) or frame.pts > last:
                    break
        except av.FFmpegError as err:
            raise VideoDecodeError(f"cannot decode video file {name}: {err}") from err
        if len(by_pts) != len(wanted_set):
            raise VideoDecodeError(f"frames vanished on the second decode pass of {name}")
        return np.stack([by_pts[p] for p in wanted]), sampled_fps
    finally:
        container.close()


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Encode uint8[T, H, W, 3] RGB frames (H, W even) to ``path`` at ``fps`` with PyAV.

    ``codec`` defaults to libx264 when this FFmpeg build has it, else mpeg4; pixel format is
    yuv420p, hence the even-size requirement. ``options`` go to the encoder (e.g. {"crf": "0"}).
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8[T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"yuv420p needs even height and width, got {frames.shape[1:3]}")
    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(fps).limit_denominator(1001)
    if codec == "libx264":
        # x264's SIMD routines made different bytes (pixels off by up to 6) from the same 56 x 56
        # frames in some calls, so the demo's videos differed run to run; its C routines do not
        # (BUILD_NOTES "Determinism"), at no cost that matters for the small videos written here
        options = {"x264-params": "asm=0", **(options or {})}
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
