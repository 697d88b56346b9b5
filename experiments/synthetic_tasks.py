"""A synthetic grounding / counting / video-timing dataset that a tiny model can learn on a CPU.

Three tasks, written as JSONL records plus image and video files (the format users' own data
takes, see `qwen25vl_jax/data/records.py`; media paths are relative to the output directory):

* grounding: an image of random non-square size (160-640 px a side) with one coloured shape
  (a circle, square or triangle in red, green or blue, sides 30-50% of the shorter image side);
  "Where is the red circle? Answer with a bounding box." The answer is
  Qwen2.5-VL grounding JSON, ``{"bbox_2d": [x1, y1, x2, y2], "label": "red circle"}``, written
  in pixels of the *original* image: the input pipeline (``ground_coords="original"``) rescales
  it to the resized image the model sees, so the model learns absolute resized-pixel coordinates
  as Qwen2.5-VL does, and the files do not depend on the pixel budget.
* counting: 1-5 shapes of one kind in random colours; "How many triangles?" -> "3".
* timing: a 56x56 video of 8-16 frames at 1, 2 or 4 fps in which a moving dot turns red at a
  whole second (1-5); "At what second does the dot turn red?" -> "3". The frame index of the change
  does not tell the second (the fps varies and is not in the prompt), the temporal MRoPE
  positions do: grid t sits at ``t * second_per_grid_t * tokens_per_second``. The change always
  starts a temporal patch (2 frames), so it is visible in one ViT grid step; each video entry
  carries its own ``fps`` so every frame is sampled whatever the pipeline's default rate.

  python -m experiments.synthetic_tasks --out_dir=/tmp/shapes --num_train=3000 --num_eval=150
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (50, 90, 230)}
KINDS = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
TASKS = ("grounding", "counting", "timing")
VIDEO_SIDE = 56  # one 2x2 window of merge units per frame: 4 LLM tokens per temporal step
VIDEO_FPS = (1, 2, 4)
VIDEO_FRAMES = (8, 10, 12, 14, 16)
MAX_CHANGE_SECOND = 5
GROUND_SIDE = (0.3, 0.5)  # shape side / shorter image side
COUNT_SIDE = (0.16, 0.26)

GROUND_Q = "Where is the {label}? Answer with a bounding box."
COUNT_Q = "How many {plural}?"
TIME_Q = "At what second does the dot turn red?"


def box_answer(box, label: str) -> str:
    """The Qwen2.5-VL grounding answer for one box (integer pixels)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return json.dumps({"bbox_2d": [x1, y1, x2, y2], "label": label})


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box, colour) -> None:
    """Draws a shape filling the square `box` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def place_squares(rng: np.random.Generator, w: int, h: int, n: int, frac: tuple[float, float]):
    """n non-overlapping square boxes with sides frac * min(w, h), integer corners; shrinks the
    sides when the image is too crowded. Returns a list of (x1, y1, x2, y2), x2/y2 exclusive."""
    lo, hi = frac
    for _attempt in range(20):
        boxes = []
        for _ in range(n):
            for _try in range(60):
                side = int(rng.uniform(lo, hi) * min(w, h))
                x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
                cand = (x, y, x + side, y + side)
                gap = 3  # keep shapes apart so each is its own object
                if all(
                    cand[0] >= b[2] + gap
                    or b[0] >= cand[2] + gap
                    or cand[1] >= b[3] + gap
                    or b[1] >= cand[3] + gap
                    for b in boxes
                ):
                    boxes.append(cand)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
        lo, hi = lo * 0.85, hi * 0.85
    raise RuntimeError(f"cannot place {n} shapes in a {w}x{h} image")


def _canvas(rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(160, 641, size=2))
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    return Image.new("RGB", (w, h), background)


def _shape_image(rng, shapes: list[tuple[str, str]], frac) -> tuple[Image.Image, list]:
    """An image with the given (colour, kind) shapes; returns it and each shape's box."""
    img = _canvas(rng)
    boxes = place_squares(rng, img.width, img.height, len(shapes), frac)
    draw = ImageDraw.Draw(img)
    for (colour, kind), box in zip(shapes, boxes, strict=True):
        # PIL's shapes cover [x1, x2] inclusive: draw to x2 - 1 so the box is exact
        draw_shape(draw, kind, (box[0], box[1], box[2] - 1, box[3] - 1), COLOURS[colour])
    return img, boxes


def _record(rid: str, task: str, turns: list[tuple[str, str]], media_key: str, media) -> dict:
    """A record: the media placeholder before the first question, then (question, answer)
    turns."""
    tag = "<image>" if media_key == "images" else "<video>"
    messages = []
    for k, (question, answer) in enumerate(turns):
        messages.append({"role": "user", "content": (tag if k == 0 else "") + question})
        messages.append({"role": "assistant", "content": answer})
    return {"id": rid, "task": task, "messages": messages, media_key: [media]}


def save_png(img: Image.Image, out_dir: str, path: str) -> None:
    # zlib level 1: a third of the default's encoding time; PNG is lossless, the pixels are equal
    img.save(os.path.join(out_dir, path), compress_level=1)


def grounding_sample(rng: np.random.Generator, rid: str, out_dir: str) -> dict:
    """One shape (a random colour and kind, sides 30-50% of the shorter image side) on a plain
    canvas; asks where it is. One shape, not several: telling a named shape from distractors
    needs the question routed to the answer before the image is read, more than 3 layers learn
    in a few hundred CPU steps (BUILD_NOTES, "the main job")."""
    colour, kind = list(COLOURS)[int(rng.integers(len(COLOURS)))], KINDS[int(rng.integers(3))]
    img, boxes = _shape_image(rng, [(colour, kind)], GROUND_SIDE)
    label = f"{colour} {kind}"
    path = f"images/{rid}.png"
    save_png(img, out_dir, path)
    return _record(
        rid,
        "grounding",
        [(GROUND_Q.format(label=label), box_answer(boxes[0], label))],
        "images",
        path,
    )


def counting_sample(rng: np.random.Generator, rid: str, out_dir: str) -> dict:
    """1-5 shapes of one kind in random colours; asks how many there are. One kind per image,
    as one shape per grounding image (see `grounding_sample`)."""
    kind, n = KINDS[int(rng.integers(len(KINDS)))], int(rng.integers(1, 6))
    shapes = [(list(COLOURS)[int(rng.integers(len(COLOURS)))], kind) for _ in range(n)]
    img, _ = _shape_image(rng, shapes, COUNT_SIDE)
    path = f"images/{rid}.png"
    save_png(img, out_dir, path)
    return _record(rid, "counting", [(COUNT_Q.format(plural=PLURAL[kind]), str(n))], "images", path)


def change_seconds(fps: int, frames: int) -> list[int]:
    """Whole seconds at which a change starts a temporal patch (an even frame index) and leaves
    at least one temporal patch before and after it."""
    return [
        s
        for s in range(1, min(math.ceil(frames / fps), MAX_CHANGE_SECOND + 1))
        if (s * fps) % 2 == 0 and 2 <= s * fps <= frames - 2
    ]


def timing_frames(rng: np.random.Generator, fps: int, frames: int, second: int) -> np.ndarray:
    """uint8[frames, 56, 56, 3]: a dot moving in a straight line, red from `second` on."""
    side, radius = VIDEO_SIDE, int(rng.integers(11, 15))
    start, end = rng.uniform(radius, side - radius, size=(2, 2))
    before = COLOURS["blue"] if rng.random() < 0.5 else COLOURS["green"]
    background = tuple(int(v) for v in rng.integers(0, 60, size=3))
    out = np.empty((frames, side, side, 3), np.uint8)
    for i in range(frames):
        x, y = start + (end - start) * i / max(frames - 1, 1)
        img = Image.new("RGB", (side, side), background)
        colour = COLOURS["red"] if i >= second * fps else before
        ImageDraw.Draw(img).ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        out[i] = np.asarray(img)
    return out


def timing_sample(rng: np.random.Generator, rid: str, out_dir: str) -> dict:
    """A moving-dot video (see `timing_frames`) at a random fps and length; asks when the dot
    turns red."""
    from qwen25vl_jax.data.video import write_video

    while True:
        fps = VIDEO_FPS[int(rng.integers(len(VIDEO_FPS)))]
        frames = VIDEO_FRAMES[int(rng.integers(len(VIDEO_FRAMES)))]
        seconds = change_seconds(fps, frames)
        if seconds:
            break
    second = seconds[int(rng.integers(len(seconds)))]
    path = f"videos/{rid}.mp4"
    write_video(
        os.path.join(out_dir, path),
        timing_frames(rng, fps, frames, second),
        fps,
        options={"crf": "8"},
    )
    return _record(rid, "timing", [(TIME_Q, str(second))], "videos", {"path": path, "fps": fps})


MAKERS = {"grounding": grounding_sample, "counting": counting_sample, "timing": timing_sample}


MIX = (0.6, 0.15, 0.25)  # grounding, counting, timing records (BUILD_NOTES §6, runs 7-10)


def records(n: int, seed: int, out_dir: str, prefix: str, mix=MIX) -> Iterator[dict]:
    """n records of the three tasks in proportions `mix`, interleaved, media written to
    out_dir."""
    rng = np.random.default_rng(seed)
    counts = np.floor(np.asarray(mix) * n).astype(int)
    counts[0] += n - counts.sum()
    tasks = np.repeat(np.arange(len(TASKS)), counts)
    for i, t in enumerate(rng.permutation(tasks)):
        task = TASKS[int(t)]
        yield MAKERS[task](rng, f"{prefix}{task[0]}{i:05d}", out_dir)


def generate(
    out_dir: str, num_train: int, num_eval: int, *, seed: int = 0, mix=MIX
) -> dict[str, str]:
    """Writes train.jsonl and eval.jsonl (one question per record, the same distribution),
    from disjoint seeds, with media under out_dir.
    Returns {"train": path, "eval": path, "media_root": out_dir}."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    paths = {"media_root": out_dir}
    for split, n, s in (("train", num_train, seed), ("eval", num_eval, seed + 1_000_003)):
        path = os.path.join(out_dir, f"{split}.jsonl")
        with open(path + ".tmp", "w") as f:
            for rec in records(n, s, out_dir, prefix=f"{split}-", mix=mix):
                f.write(json.dumps(rec) + "\n")
        os.replace(path + ".tmp", path)
        paths[split] = path
    return paths


def rl_prompt_record(record: dict) -> dict:
    """An RL prompt record (`qwen25vl_jax/data/rl_prompts.py`) of a one-question record: the
    question without its answer, and the truth as the reward reads it (grounding: ``bbox_2d``
    in original pixels, as the answer wrote it; counting: ``count``; timing: ``second``)."""
    *prompt, answer = record["messages"]
    truth = answer["content"]
    task = record["task"]
    if task == "grounding":
        value = {"bbox_2d": json.loads(truth)["bbox_2d"]}
    else:
        value = {"count": int(truth)} if task == "counting" else {"second": float(truth)}
    media = {k: record[k] for k in ("images", "videos") if k in record}
    return {"id": record["id"], "task": task, "messages": prompt, **media, **value}


def write_rl_prompts(
    records_path: str, out_path: str, tasks=("grounding", "counting"), per_task: int | None = None
) -> int:
    """Writes the RL prompts of the records of `tasks` in `records_path` (JSONL) to
    `out_path` (same media root), at most `per_task` of each task (the first ones); returns
    how many."""
    n, seen = 0, dict.fromkeys(tasks, 0)
    with open(records_path) as f, open(out_path + ".tmp", "w") as out:
        for line in f:
            record = json.loads(line)
            task = record["task"]
            if task in seen and (per_task is None or seen[task] < per_task):
                out.write(json.dumps(rl_prompt_record(record)) + "\n")
                seen[task], n = seen[task] + 1, n + 1
    os.replace(out_path + ".tmp", out_path)
    return n


def main(argv):
    del argv
    f = flags.FLAGS
    print(json.dumps(generate(f.out_dir, f.num_train, f.num_eval, seed=f.seed), indent=2))


if __name__ == "__main__":  # flags defined here only: importing the module defines none
    flags.DEFINE_string("out_dir", "out/shapes", "where the JSONL files and media go")
    flags.DEFINE_integer("num_train", 3000, "training records")
    flags.DEFINE_integer("num_eval", 150, "held-out records")
    flags.DEFINE_integer("seed", 0, "random seed")
    app.run(main)
