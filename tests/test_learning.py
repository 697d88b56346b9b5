"""The demo's training path learns: a CI-sized run of `experiments.train` (the demo config, the
synthetic grounding / counting / timing records, the small tokenizer) must lower the training
loss and predict held-out answers, teacher-forced, far better than the best constant guess.

The answer positions and next tokens are found here from the token ids alone (the assistant
header of the chat template and `<|im_end|>`), not from the pipeline's `targets` or
`loss_mask`: a label shift or loss mask broken in the pipeline trains the model on the wrong
tokens, and it then fails this check rather than grading itself."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx

from experiments import demo
from experiments import train as train_cli
from experiments.configs import base
from experiments.configs import demo as demo_config
from qwen25vl_jax.checkpoint import latest_checkpoint, load_checkpoint
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.records import record_to_sample
from qwen25vl_jax.data.tokenizer import load_tokenizer
from qwen25vl_jax.model.qwen25vl import forward

STEPS = 30
NUM_TRAIN, NUM_EVAL = 48, 16
LOSS_FALL = 0.5  # the last 5 steps' mean loss is at most half the first step's
ACCURACY_OVER_CONSTANT = 2.0  # answer-token accuracy at least twice the best constant guess
FIRST_TOKEN_ACCURACY = 0.5  # the first answer token ('{"' of grounding, a digit otherwise)


def answer_spans(tokens: np.ndarray, header: list[int], im_start: int, im_end: int):
    """[(first, last)] positions of the last assistant reply (its text and `<|im_end|>`) in one
    row of token ids, found from the ids alone."""
    starts = np.flatnonzero(tokens == im_start)
    assert len(starts), "no <|im_start|> in the row"
    first = int(starts[-1]) + 1 + len(header)
    assert tokens[first - len(header) : first].tolist() == header, "not an assistant turn"
    ends = np.flatnonzero(tokens[first:] == im_end)
    assert len(ends), "the reply has no <|im_end|>"
    return first, first + int(ends[0])


@pytest.mark.heavy
def test_demo_training_learns_the_answers(tmp_path):
    paths, vocab_size = demo.prepare(str(tmp_path / "data"), NUM_TRAIN, NUM_EVAL, seed=0)
    c = demo_config.get_config()
    c.model.overrides.text.vocab_size = vocab_size
    c.model.overrides.text.num_layers = 2
    c.data.paths, c.data.media_root = paths["train"], paths["media_root"]
    c.data.tokenizer_dir, c.data.workers = paths["tokenizer"], 0
    c.train.steps, c.train.log_every, c.train.save_every = STEPS, 1, 10 * STEPS
    c.train.batch_size = 4
    c.optim.warmup_steps, c.optim.total_steps = 5, STEPS
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # flag defaults (no --peak_tflops) without a command line
    losses = train_cli.train(c, str(tmp_path / "train"))
    assert len(losses) == STEPS
    late = float(np.mean(losses[-5:]))
    assert late <= LOSS_FALL * losses[0], (losses[0], late)

    # held-out records, one per row, teacher-forced
    model, cfg = load_checkpoint(latest_checkpoint(str(tmp_path / "train")))
    tok = load_tokenizer(paths["tokenizer"])
    options = base.record_options(c.data)
    with open(paths["eval"]) as f:
        samples = [record_to_sample(line, f"eval:{i}", cfg=cfg, tokenizer=tok, options=options)
                   for i, line in enumerate(f)]  # fmt: skip
    batch = assemble([[s] for s in samples], cfg, seq_len=c.data.seq_len,
                     num_slots=c.data.num_slots)  # fmt: skip
    graphdef, state = nnx.split(model)
    predicted = np.asarray(jax.jit(forward)(graphdef, state, batch).argmax(-1))
    header = tok.encode("assistant\n").ids
    ids = {name: tok.token_to_id(name) for name in ("<|im_start|>", "<|im_end|>")}
    right, truth, first_right = [], [], []
    for row, tokens in enumerate(np.asarray(batch.tokens)):
        first, last = answer_spans(tokens, header, ids["<|im_start|>"], ids["<|im_end|>"])
        # the logits at position t predict the token at t + 1
        hits = predicted[row, first - 1 : last] == tokens[first : last + 1]
        right += hits.tolist()
        truth += tokens[first : last + 1].tolist()
        first_right.append(bool(hits[0]))
    accuracy = float(np.mean(right))
    constant = np.unique(truth, return_counts=True)[1].max() / len(truth)
    first_accuracy = float(np.mean(first_right))
    print(
        f"loss {losses[0]:.3f} -> {late:.3f}; held-out answer tokens {len(truth)}: accuracy "
        f"{accuracy:.3f} (best constant {constant:.3f}), first token {first_accuracy:.3f}"
    )
    assert accuracy >= ACCURACY_OVER_CONSTANT * constant, (accuracy, constant)
    assert first_accuracy >= FIRST_TOKEN_ACCURACY, first_accuracy
