"""Grounding, counting and video-timing metrics of a checkpoint, beside trivial baselines.

  python -m experiments.eval --checkpoint=out/demo/train --data=out/demo/data/eval.jsonl \
      --config=experiments/configs/demo.py --media_root=out/demo/data \
      --tokenizer_dir=out/demo/tokenizer \
      --train_data=out/demo/data/train.jsonl --output=report.json --draw=boxes.png

--checkpoint: a checkpoint directory (converted or a trainer step) or a trainer workdir (its
latest step). Every assistant turn of the JSONL (the training format,
`qwen25vl_jax/data/records.py`) is one question: the turn is the truth, the turns before it the
prompt. The task is the record's ``"task"`` field, else read from the truth: a ``bbox_2d`` is
grounding, a number about a video is timing, a number about an image is counting. Media are
decoded and resized as the training pipeline does (`records.load_media`) and each prompt
becomes a `Sample` (`data.sample.encode_sample`): pass the training config
(--config=experiments/configs/demo.py for the demo's checkpoints) so that the pixel budgets and
ground_coords are the ones the model was trained with (default: the library's, `RecordOptions`).
Answers are generated greedily in batches (`qwen25vl_jax.inference.Generator`); predicted boxes
are mapped back to the original image.

Metrics and baselines: `experiments/metrics.py` (mean IoU and accuracy at IoU >= 0.5, exact-count
accuracy, time MAE; unreadable answers count as wrong). The baselines' constants are fitted on
--train_data (default: the evaluated set itself, which can only make them stronger).

The report (`evaluate`'s result, also written by --output):
  {"data": path, "baselines_from": path,
   "metrics": {metric: {"model": value, "baselines": {baseline name: value},
                        "baseline": the strongest of those, "n": questions,
                        "unreadable": answers without a box / number}},
   "baselines": {"mean_box_rel", "mode_count", "mean_time", "median_time"} (the constants),
   "beats_baseline": {metric: model strictly better than every baseline},
   "samples": [{"id", "task", "answer", "pred", "truth"}]}   (boxes in original pixels)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time

import numpy as np

from experiments.eval_examples import Example, load_examples, message_text
from experiments.metrics import (
    BASELINES,
    METRICS,
    beats_baselines,
    box_iou,
    fit_baselines,
    parse_number,
    strongest,
    task_metrics,
)
from qwen25vl_jax.atomic_write import atomic_path
from qwen25vl_jax.cli_errors import (
    InputError,
    check_output_file,
    input_errors,
    require_flags,
    run,
)
from qwen25vl_jax.data.records import (
    RecordError,
    RecordOptions,
)
from qwen25vl_jax.precision import define_precision_flag, set_matmul_precision


def baseline_stats(examples: list[Example]) -> dict:
    """The baselines' constants (`metrics.fit_baselines`) fitted on `examples`' truths."""
    rel = [
        np.asarray(e.truth) / np.tile(e.original_hw[::-1], 2)
        for e in examples
        if e.task == "grounding"
    ]
    return fit_baselines(
        rel,
        [e.truth for e in examples if e.task == "counting"],
        [e.truth for e in examples if e.task == "timing"],
    )


# ---- generation -------------------------------------------------------------------------------
def prepare(e: Example, cfg, tokenizer, options: RecordOptions):
    """The generation prompt (a `Sample`) of one example, its media decoded as the training
    pipeline does (coordinates in earlier turns rescaled to the resized image for "original"
    data)."""
    from qwen25vl_jax.data.records import ground_messages, load_media
    from qwen25vl_jax.data.sample import encode_sample

    media = load_media(e.conversation, cfg, options)
    messages = e.prompt
    if options.ground_coords == "original":
        messages = ground_messages(e.conversation, media, cfg.vision.patch_size)
    return encode_sample(
        cfg,
        tokenizer,
        messages,
        media,
        add_generation_prompt=True,
        default_system=options.default_system,
    )


def generate_answers(
    model,
    tokenizer,
    examples,
    options: RecordOptions,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    log=print,
    sampling=None,
    seed: int = 0,
) -> list[dict]:
    """Greedy answers of every example: [{"answer": str, "resized_hw": (h, w) of the question's
    image | None, "duration": seconds of the video | None}]. Batches hold one modality (by
    the first medium); every batch of a modality has the same shapes (rows, prompt length and
    ViT slots padded), so each compiles once. sampling: an `inference.Sampling` instead of
    greedy decoding (DPO pairs from the model's own samples), batch k drawn with key seed + k."""
    from qwen25vl_jax.inference import Generator
    from qwen25vl_jax.inference.generate import prepare_batch, round_up
    from qwen25vl_jax.model.qwen25vl import RunOptions

    cfg = model.cfg
    ps = cfg.vision.patch_size
    gen = Generator(model, opts=RunOptions(dtype=np.float32))
    stop = [cfg.eos_token_id, cfg.bos_token_id]
    prepared = [prepare(e, cfg, tokenizer, options) for e in examples]
    out: list[dict] = [{}] * len(examples)
    for kind in ("image", "video", None):
        rows = [i for i, p in enumerate(prepared) if (p.media[0].kind if p.media else None) == kind]
        if not rows:
            continue
        slots = max(prepared[i].num_slots(cfg) for i in rows)
        length = round_up(max(prepared[i].num_tokens for i in rows), 64)
        rows_per_batch = min(batch_size, len(rows))
        t0 = time.perf_counter()
        for start in range(0, len(rows), rows_per_batch):
            chunk = rows[start : start + rows_per_batch]
            padded = chunk + [chunk[-1]] * (rows_per_batch - len(chunk))
            batch = prepare_batch(
                cfg, [prepared[i] for i in padded], length_bucket=length, patch_bucket=slots or None
            )
            res = gen.generate(
                batch,
                max_new_tokens=max_new_tokens,
                stop_tokens=stop,
                **({} if sampling is None else {"sampling": sampling, "key": seed + start}),
                cache_size=length + round_up(max_new_tokens, 64),
            )
            for r, i in enumerate(chunk):
                toks = [int(t) for t in res.tokens[r, : res.num_tokens[r]] if t not in stop]
                images = [m for m in prepared[i].media if m.kind == "image"]
                videos = [m for m in prepared[i].media if m.kind == "video"]
                out[i] = {
                    "answer": tokenizer.decode(toks, skip_special_tokens=True),
                    "resized_hw": images[-1].resized_hw(ps) if images else None,
                    "duration": videos[-1].duration if videos else None,
                }
        log(
            f"[eval] {len(rows)} {kind or 'text'} questions answered in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    return out


# ---- scoring ----------------------------------------------------------------------------------
def _guesses(task: str, constant, examples: list[Example]) -> list:
    """A baseline's answer to each question: its constant (a relative box scaled to the image)."""
    if task == "grounding":
        return [list(np.asarray(constant) * np.tile(e.original_hw[::-1], 2)) for e in examples]
    return [constant] * len(examples)


def score(examples: list[Example], answers: list[dict], stats: dict) -> dict:
    """The report's "metrics", "baselines", "beats_baseline" and "samples" (see the module
    docstring) of generated `answers`, with baselines from the constants `stats`."""
    from qwen25vl_jax.inference.grounding import ground

    by_task = collections.defaultdict(list)  # task -> [(prediction, example, answer)]
    samples = []
    for e, a in zip(examples, answers, strict=True):
        if e.task == "grounding":
            found = [
                d
                for d in ground(a["answer"], a["resized_hw"], e.original_hw).detections
                if d.kind == "bbox"
            ]
            pred = list(found[0].coords) if found else None
        else:
            pred = parse_number(a["answer"])
        by_task[e.task].append((pred, e, a))
        truth = list(e.truth) if e.task == "grounding" else e.truth
        samples.append(
            {"id": e.record_id, "task": e.task, "answer": a["answer"], "pred": pred, "truth": truth}
        )
    metrics = {}
    for task, rows in by_task.items():
        preds, exs = [r[0] for r in rows], [r[1] for r in rows]
        truths = [e.truth for e in exs]
        durations = [r[2].get("duration") for r in rows]
        model_m = task_metrics(task, preds, truths, durations)
        base_m = {
            name: task_metrics(task, _guesses(task, stats[key], exs), truths, durations)
            for name, key in BASELINES[task].items()
            if stats.get(key) is not None
        }
        for metric, value in model_m.items():
            bases = {name: m[metric] for name, m in base_m.items()}
            metrics[metric] = {
                "model": value,
                "baselines": bases,
                "baseline": strongest(metric, bases.values()),
                "n": len(rows),
                "unreadable": sum(p is None for p in preds),
            }
    metrics = {m: metrics[m] for m in METRICS if m in metrics}
    return {
        "metrics": metrics,
        "baselines": stats,
        "beats_baseline": beats_baselines(metrics),
        "samples": samples,
    }


def format_table(metrics: dict) -> str:
    """A plain-text table: each metric beside each of its baselines, and whether the model
    beats all of them."""
    beats = beats_baselines(metrics)
    lines = [
        f"{'task':<10} {'metric':<23} {'n':>4} {'model':>7}  {'baseline':<20} {'value':>7}"
        "  beats all"
    ]
    for name, (task, _, desc) in METRICS.items():
        if name not in metrics:
            continue
        v = metrics[name]
        for k, (base, value) in enumerate(list(v["baselines"].items()) or [("(none)", None)]):
            left = f"{task:<10} {desc:<23} {v['n']:>4} {v['model']:>7.3f}" if k == 0 else ""
            right = f"{'' if value is None else f'{value:.3f}':>7}"
            verdict = ("  yes" if beats[name] else "  no") if k == 0 else ""
            lines.append(f"{left:<47}  {base:<20} {right}{verdict}")
    return "\n".join(lines)


# ---- drawing ----------------------------------------------------------------------------------
TRUE_COLOUR, PRED_COLOUR = (0, 0, 0), (240, 50, 230)  # black truth, magenta prediction


def draw_boxes(examples, result: dict, path: str, max_images: int = 6, side: int = 240) -> int:
    """Draws true (black) and predicted (magenta) boxes on the first `max_images` grounding
    examples, tiled 3 per row with the question and IoU under each; writes one PNG. Returns the
    number of images drawn."""
    from PIL import Image, ImageDraw

    rows = [
        (e, s) for e, s in zip(examples, result["samples"], strict=True) if e.task == "grounding"
    ][:max_images]
    if not rows:
        return 0
    cols = min(3, len(rows))
    canvas = Image.new("RGB", (cols * (side + 8), -(-len(rows) // cols) * (side + 28)), "white")
    for k, (e, s) in enumerate(rows):
        with Image.open(e.image_path) as im:
            img = im.convert("RGB")
        scale = side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        draw = ImageDraw.Draw(img)
        # PIL strokes inwards: widen the box by the stroke so the object's outline stays visible
        outside = lambda box, k=scale: [v * k + d for v, d in zip(box, (-3, -3, 2, 2))]
        draw.rectangle(outside(s["truth"]), outline=TRUE_COLOUR, width=3)
        caption = "no box"
        if s["pred"] is not None:
            draw.rectangle(outside(s["pred"]), outline=PRED_COLOUR, width=3)
            caption = f"IoU {box_iou(s['pred'], s['truth']):.2f}"
        label = message_text(e.prompt[-1]).removeprefix("Where is the ").split("?")[0][:24]
        x, y = (k % cols) * (side + 8) + 4, (k // cols) * (side + 28) + 4
        canvas.paste(img, (x, y))
        ImageDraw.Draw(canvas).text((x, y + side + 4), f"{label}: {caption}", fill="black")
    with atomic_path(path) as tmp:  # a killed run leaves no half-written PNG
        canvas.save(tmp, format="PNG")
    return len(rows)


# ---- command line -----------------------------------------------------------------------------
def evaluate(
    model,
    tokenizer,
    data: str,
    options: RecordOptions,
    *,
    train_data=None,
    max_samples=None,
    batch_size=16,
    max_new_tokens=64,
    output=None,
    draw=None,
    log=print,
) -> dict:
    """Loads the questions of `data`, generates, scores against the baselines fitted on
    `train_data` (default: `data`); writes the JSON report / the PNG of boxes when asked."""
    factor = model.cfg.vision.patch_size * model.cfg.vision.spatial_merge_size
    skipped: list[RecordError] = []
    examples = load_examples(data, options, max_samples, factor=factor, skipped=skipped)
    fitted = (
        load_examples(train_data, options, factor=factor, skipped=[]) if train_data else examples
    )
    if skipped:
        reasons = collections.Counter(e.reason for e in skipped)
        log(
            f"[eval] skipped {len(skipped)} records of {data} ({dict(reasons)}); the first: "
            f"{skipped[0]}"
        )
    if not examples:
        raise InputError(f"{data}: no question to evaluate ({len(skipped)} records skipped)")
    answers = generate_answers(
        model,
        tokenizer,
        examples,
        options,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        log=log,
    )
    result = {
        "data": data,
        "baselines_from": train_data or data,
        "skipped": [{"id": e.record_id, "reason": e.reason, "detail": e.detail} for e in skipped],
        **score(examples, answers, baseline_stats(fitted)),
    }
    if output:  # written whole or not at all
        from pathlib import Path

        from qwen25vl_jax.atomic_write import atomic_write_text

        atomic_write_text(Path(output), json.dumps(result, indent=1))
    if draw:
        drawn = draw_boxes(examples, result, draw)
        log(f"[eval] drew predicted (magenta) and true (black) boxes of {drawn} images to {draw}")
    return result


def define_flags() -> None:
    """The command line's flags (defined only when run as a script: importing defines none)."""
    from absl import flags
    from ml_collections import config_flags

    flags.DEFINE_string("checkpoint", None, "checkpoint / step directory or trainer workdir")
    flags.DEFINE_string("data", None, "JSONL of grounding / counting / timing records")
    flags.DEFINE_string("media_root", None, "media root (default: the JSONL's directory)")
    flags.DEFINE_string(
        "tokenizer_dir",
        None,
        "tokenizer.json directory (default: "
        "<checkpoint>/hf_assets, as converted checkpoints hold it)",
    )
    flags.DEFINE_string("train_data", None, "JSONL the baselines are fitted on (default: data)")
    flags.DEFINE_integer("max_samples", None, "evaluate the first N questions only")
    flags.DEFINE_integer("batch_size", 16, "questions per generation batch")
    flags.DEFINE_integer("max_new_tokens", 64, "answer tokens at most")
    config_flags.DEFINE_config_file(
        "config",
        None,
        "the training config: media are decoded as its `data` section says "
        "(pixel budgets, fps, ground_coords, default_system); default: the library's defaults",
    )
    flags.DEFINE_string("output", None, "write the report (metrics, answers) as JSON here")
    flags.DEFINE_string("draw", None, "draw true and predicted boxes into this PNG")
    define_precision_flag("highest")


def main(argv):
    del argv
    from absl import flags

    from experiments.configs import base
    from qwen25vl_jax.checkpoint import latest_checkpoint, load_checkpoint
    from qwen25vl_jax.data.tokenizer import load_tokenizer

    f = flags.FLAGS
    require_flags("checkpoint", "data")
    if not os.path.isfile(f.data):
        raise InputError(f"--data {f.data}: no such file")
    for path in (f.output, f.draw):
        if path:
            check_output_file(path)
    with input_errors(ValueError, OSError, prefix="--checkpoint: "):
        ckpt = latest_checkpoint(f.checkpoint)
    with input_errors(ValueError, OSError, prefix="--tokenizer_dir: "):
        tokenizer = load_tokenizer(f.tokenizer_dir or os.path.join(ckpt, "hf_assets"))
    set_matmul_precision(f.matmul_precision)
    with input_errors(ValueError, OSError, prefix="--checkpoint: "):
        model, _ = load_checkpoint(ckpt)
    options = base.record_options(f.config.data) if f.config else RecordOptions()
    media_root = f.media_root or os.path.dirname(os.path.abspath(f.data))
    options = dataclasses.replace(options, media_root=media_root)
    result = evaluate(
        model,
        tokenizer,
        f.data,
        options,
        train_data=f.train_data,
        max_samples=f.max_samples,
        batch_size=f.batch_size,
        max_new_tokens=f.max_new_tokens,
        output=f.output,
        draw=f.draw,
    )
    print(f"checkpoint {ckpt}; baselines fitted on {result['baselines_from']}")
    print(format_table(result["metrics"]))


if __name__ == "__main__":
    define_flags()
    run(main, "eval")
