"""Preference pairs from a model's own samples (issue 15's DPO demo): for each grounding /
counting question of a training JSONL, `--group_size` answers sampled from the checkpoint, scored
against the record's truth (IoU of the box; exact count; unreadable answers below both); the
best and the worst answer of a question become a pair when their rewards differ by at least
`--margin`. Written as preference records (`qwen25vl_jax/data/preference.py`), coordinates in
original pixels like the demo's records:

  python -m experiments.dpo_self_pairs --checkpoint=out/demo/train \
      --data=out/demo/data/train.jsonl --media_root=out/demo/data \
      --tokenizer_dir=out/demo/tokenizer --config=experiments/configs/demo.py \
      --max_samples=256 --group_size=4 --output=out/demo/dpo_pairs.jsonl

Then DPO from the same checkpoint (`experiments/configs/dpo_demo.py`) and `experiments.eval`
on the held-out set for both checkpoints (BUILD_NOTES §6).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments.eval import generate_answers, score
from experiments.eval_examples import Example, load_examples
from qwen25vl_jax.atomic_write import atomic_write_text
from qwen25vl_jax.cli_errors import InputError, check_output_file, input_errors, require_flags, run
from qwen25vl_jax.data.records import rescale_grounding
from qwen25vl_jax.inference.grounding import box_iou
from qwen25vl_jax.precision import define_precision_flag, set_matmul_precision

UNREADABLE = -0.5  # below any readable answer (IoU 0, a wrong count)


def reward(task: str, pred, truth) -> float:
    """IoU for a box, 1 / 0 for a count; UNREADABLE when no box / number was read."""
    if pred is None:
        return UNREADABLE
    return box_iou(pred, truth) if task == "grounding" else float(pred == truth)


def pair_record(e: Example, chosen: dict, rejected: dict) -> dict | None:
    """The preference record of question `e` (its prompt and media as the source record) with
    two answers; boxes mapped from the resized image's pixels to the original's (None when an
    answer is empty or its box list cannot be read as numbers)."""
    messages = [
        {"role": m["role"], "content": [dict(it) for it in m["content"]]}
        for m in e.conversation.messages
    ]
    texts = []
    for a in (chosen, rejected):
        text = a["answer"]
        if not text.strip():  # an empty reply: the record reader rejects it (as for SFT)
            return None
        if a["resized_hw"] is not None and e.original_hw is not None:
            try:
                text = rescale_grounding(text, tuple(a["resized_hw"]), tuple(e.original_hw))
            except ValueError:  # a box list that is not numbers: the record parser rejects it
                return None
        texts.append(text)
    refs = e.conversation.media
    record = {"id": e.record_id, "task": e.task, "messages": messages}
    record["images"] = [r.path for r in refs if r.kind == "image"]
    record["videos"] = [{"path": r.path, **dict(r.options)} for r in refs if r.kind == "video"]
    return {**record, "chosen": texts[0], "rejected": texts[1]}


def main(argv):
    del argv
    from experiments.configs import base
    from qwen25vl_jax.checkpoint import latest_checkpoint, load_checkpoint
    from qwen25vl_jax.data.tokenizer import load_tokenizer
    from qwen25vl_jax.inference.sampling import Sampling

    f = flags.FLAGS
    require_flags("checkpoint", "data", "output", "tokenizer_dir")
    check_output_file(f.output)
    set_matmul_precision(f.matmul_precision)
    with input_errors(ValueError, OSError, prefix="--checkpoint: "):
        model, _ = load_checkpoint(latest_checkpoint(f.checkpoint))
    with input_errors(ValueError, OSError, prefix="--tokenizer_dir: "):
        tokenizer = load_tokenizer(f.tokenizer_dir)
    options = base.record_options(f.config.data) if f.config else None
    if options is None:
        raise InputError("--config is required (the training config: pixel budgets)")
    media_root = f.media_root or os.path.dirname(os.path.abspath(f.data))
    options = dataclasses.replace(options, media_root=media_root)
    factor = model.cfg.vision.patch_size * model.cfg.vision.spatial_merge_size
    tasks = set(f.tasks.split(","))
    examples = [e for e in load_examples(f.data, options, factor=factor) if e.task in tasks]
    examples = examples[: f.max_samples]
    if not examples:
        raise InputError(f"{f.data}: no {sorted(tasks)} question")
    sampling = Sampling(temperature=f.temperature, top_p=f.top_p)
    rewards, answers = [], []
    for g in range(f.group_size):  # every group member: one pass over the questions
        got = generate_answers(model, tokenizer, examples, options, batch_size=f.batch_size,
                               max_new_tokens=f.max_new_tokens, sampling=sampling,
                               seed=1000 * g + f.seed)  # fmt: skip
        samples = score(examples, got, {})["samples"]
        rewards.append([reward(s["task"], s["pred"], s["truth"]) for s in samples])
        answers.append(got)
    r = np.asarray(rewards)  # [G, questions]
    records = []
    for i, e in enumerate(examples):
        best, worst = int(np.argmax(r[:, i])), int(np.argmin(r[:, i]))
        if r[best, i] - r[worst, i] >= f.margin:
            record = pair_record(e, answers[best][i], answers[worst][i])
            records += [record] if record is not None else []
    atomic_write_text(f.output, "".join(json.dumps(rec) + "\n" for rec in records))
    for task in sorted(tasks):
        cols = [i for i, e in enumerate(examples) if e.task == task]
        if cols:
            print(f"[pairs] {task}: {len(cols)} questions, mean reward {r[:, cols].mean():.3f}, "
                  f"best-of-{f.group_size} {r[:, cols].max(0).mean():.3f}")  # fmt: skip
    print(f"[pairs] {len(records)} pairs of {len(examples)} questions written to {f.output}")


def define_flags():
    flags.DEFINE_string("checkpoint", None, "checkpoint / step directory or trainer workdir")
    flags.DEFINE_string("data", None, "training JSONL (records with their true answers)")
    flags.DEFINE_string("media_root", None, "media root (default: the JSONL's directory)")
    flags.DEFINE_string("tokenizer_dir", None, "the model's tokenizer directory")
    flags.DEFINE_string("output", None, "the preference JSONL to write")
    flags.DEFINE_string("tasks", "grounding,counting", "tasks whose questions are sampled")
    flags.DEFINE_integer("max_samples", 256, "questions at most (the first of the file)")
    flags.DEFINE_integer("group_size", 4, "answers sampled per question")
    flags.DEFINE_float("temperature", 1.0, "sampling temperature")
    flags.DEFINE_float("top_p", 1.0, "nucleus sampling")
    flags.DEFINE_float("margin", 0.1, "least reward difference between chosen and rejected")
    flags.DEFINE_integer("batch_size", 32, "questions per generation batch")
    flags.DEFINE_integer("max_new_tokens", 48, "answer tokens at most")
    flags.DEFINE_integer("seed", 0, "sampling seed")
    config_flags.DEFINE_config_file("config", None, "the training config (its data section)")
    define_precision_flag("default")


if __name__ == "__main__":
    define_flags()
    run(main, "dpo_self_pairs")
