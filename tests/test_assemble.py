"""The one assembler and the processor-format edge: empty rows, left / right padding, the
samples <-> processor arrays round trip, and the batch schema derived from field axes."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.hf_format import hf_from_samples, rope_index, samples_from_hf
from qwen25vl_jax.model.inputs import Batch, batch_axis, field_shardings, logical_axes, split_batch
from qwen25vl_jax.sharding import make_mesh
from tests.cases import make_samples

CFG = ModelConfig.tiny()
# a video before an image in one row: media must keep their order of appearance
ROWS = [[3, ("video", (2, 4, 6), 0.5), 2, ("image", (1, 6, 10)), 4], [5, ("image", (1, 4, 4)), 1]]


def test_empty_row_is_padding_and_rows_are_independent():
    samples = make_samples(CFG, ROWS, seed=1)
    n = max(s.num_slots(CFG) for s in samples) + 16
    alone = assemble([[samples[0]]], CFG, seq_len=64, num_slots=n)
    mixed = assemble([[], [samples[0]], []], CFG, seq_len=64, num_slots=n)
    for f in dataclasses.fields(Batch):
        ax = batch_axis(f)
        a, m = getattr(alone, f.name), getattr(mixed, f.name)
        np.testing.assert_array_equal(np.take(m, 1, axis=ax), np.take(a, 0, axis=ax), f.name)
        empty = np.take(m, 0, axis=ax)
        want = {"tokens": CFG.bos_token_id, "vision_index": -1}.get(f.name, 0)
        assert (empty == want).all(), f.name


def test_left_and_right_padding_place_the_same_sample():
    s = make_samples(CFG, ROWS[:1], seed=2)[0]
    s = dataclasses.replace(s, loss_mask=np.arange(s.num_tokens) % 2 == 0)
    kw = dict(seq_len=s.num_tokens + 9, num_slots=s.num_slots(CFG))
    right = assemble([[s]], CFG, padding="right", **kw)
    left = assemble([[s]], CFG, padding="left", **kw)
    real_r, real_l = right.segment_ids[0] > 0, left.segment_ids[0] > 0
    assert real_r[: s.num_tokens].all() and real_l[-s.num_tokens :].all()
    for name in ("tokens", "vision_index", "targets", "loss_mask"):
        r, lf = getattr(right, name)[0], getattr(left, name)[0]
        np.testing.assert_array_equal(r[real_r], lf[real_l], name)
    np.testing.assert_array_equal(right.positions[:, 0][:, real_r], s.positions)
    np.testing.assert_array_equal(left.positions[:, 0][:, real_l], s.positions)
    np.testing.assert_array_equal(left.patches, right.patches)
    # each media token gathers the merge unit of its own patches (first patch of the unit)
    tok = np.flatnonzero(left.vision_index[0] >= 0)
    pixels = np.concatenate([m.patches for m in s.media])
    np.testing.assert_array_equal(left.patches[0, left.vision_index[0, tok] * 4], pixels[::4])
    with pytest.raises(ValueError, match="exceed seq_len"):
        assemble([[s]], CFG, seq_len=s.num_tokens - 1, num_slots=kw["num_slots"])


@pytest.mark.parametrize("padding", ["left", "right"])
def test_processor_arrays_round_trip(padding):
    samples = make_samples(CFG, ROWS, seed=3)
    arrays = hf_from_samples(samples, padding=padding)
    back = samples_from_hf(CFG, arrays)
    assert [[m.kind for m in b.media] for b in back] == [["video", "image"], ["image"]]
    for s, b in zip(samples, back, strict=True):
        np.testing.assert_array_equal(s.input_ids, b.input_ids)
        np.testing.assert_array_equal(s.positions, b.positions)
        for m, mb in zip(s.media, b.media, strict=True):
            assert (m.kind, m.grid, m.second_per_grid_t) == (mb.kind, mb.grid, mb.second_per_grid_t)
            np.testing.assert_array_equal(m.patches, mb.patches)
    pos, deltas = rope_index(arrays["input_ids"], CFG, attention_mask=arrays["attention_mask"],
                             video_grid_thw=arrays["video_grid_thw"],
                             image_grid_thw=arrays["image_grid_thw"],
                             second_per_grid_ts=arrays["second_per_grid_ts"])  # fmt: skip
    np.testing.assert_array_equal(deltas[:, 0], [s.rope_delta for s in samples])
    with pytest.raises(ValueError, match="pixel_values: .* patch rows"):
        samples_from_hf(CFG, {**arrays, "pixel_values": arrays["pixel_values"][1:]})


def test_schema_axes_drive_shardings_and_micro_batches():
    axes = logical_axes(Batch)
    assert set(axes) == {f.name for f in dataclasses.fields(Batch)}
    assert axes["positions"] == (None, "batch", "length")
    samples = make_samples(CFG, ROWS * 2, seed=4)
    batch = assemble([[s] for s in samples], CFG, seq_len=64, num_slots=256)
    micro = split_batch(batch, 2)
    assert micro.positions.shape == (2, 3, 2, 64) and micro.tokens.shape == (2, 2, 64)
    np.testing.assert_array_equal(micro.positions[1], batch.positions[:, 2:])
    np.testing.assert_array_equal(micro.patches[1], batch.patches[2:])
    sh = field_shardings(Batch, make_mesh(1, 1, 1))
    assert all(isinstance(getattr(sh, f.name), jax.sharding.NamedSharding)
               for f in dataclasses.fields(Batch))  # fmt: skip
