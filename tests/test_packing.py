"""Packing: nothing attends across samples, per-sample positions and loss mask are kept, and
the model's logits on a packed example equal each sample's logits computed alone."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.media import Media
from qwen25vl_jax.data.packing import Bucket, first_fit_decreasing, truncate
from qwen25vl_jax.data.sample import Sample, make_sample
from qwen25vl_jax.model.qwen25vl import forward

CFG = ModelConfig.tiny()
GRIDS = [(1, 4, 4), (1, 6, 10), (2, 4, 6), (1, 10, 4)]


def random_sample(rng, n_media: int, n_text: int) -> Sample:
    ids, loss, media = [], [], []
    for _ in range(n_media):
        grid = GRIDS[rng.integers(len(GRIDS))]
        video = grid[0] > 1
        ids += rng.integers(0, 200, rng.integers(1, 4)).tolist()
        ids += [CFG.vision_start_token_id]
        ids += [CFG.video_token_id if video else CFG.image_token_id] * (int(np.prod(grid)) // 4)
        ids += [CFG.vision_end_token_id]
        pix = rng.standard_normal((int(np.prod(grid)), CFG.vision.patch_dim)).astype(np.float32)
        media.append(Media("video" if video else "image", pix, grid, 0.75 if video else None))
    loss = [False] * len(ids)
    reply = rng.integers(0, 200, n_text).tolist()
    ids, loss = ids + reply, loss + [True] * len(reply)
    return make_sample(CFG, np.asarray(ids), np.asarray(loss), media)


def sizes(samples):
    return [(s.num_tokens, s.num_slots(CFG)) for s in samples]


def packed(samples, bucket):
    """One row holding `samples`, a batch of 1."""
    return assemble([samples], CFG, seq_len=bucket.seq_len, num_slots=bucket.num_slots)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7))
def test_packing_invariants(seed, n):
    rng = np.random.default_rng(seed)
    samples = [
        random_sample(rng, int(rng.integers(0, 3)), int(rng.integers(1, 30))) for _ in range(n)
    ]
    bucket = Bucket(seq_len=160, num_slots=16 * 12)
    bins = first_fit_decreasing(sizes(samples), bucket)
    assert sorted(i for b in bins for i in b) == list(range(n))
    for b in bins:
        ex = packed([samples[i] for i in b], bucket)
        seg = ex.segment_ids[0]
        for k, i in enumerate(b, start=1):
            s, here = samples[i], seg == k
            np.testing.assert_array_equal(ex.tokens[0][here], s.input_ids)
            np.testing.assert_array_equal(
                ex.positions[:, 0][:, here], s.positions
            )  # restart per sample
            # supervised targets are exactly the sample's assistant tokens after the first token
            np.testing.assert_array_equal(ex.loss_mask[0][here][:-1], s.loss_mask[1:])
            assert ex.loss_mask[0][here][-1] == 0
        # the ViT's frame segments never mix samples: every frame id belongs to one sample
        vit_sample = {}
        units = ex.vision_index[0]
        for pos in np.flatnonzero(units >= 0):
            slot = units[pos]
            frame = ex.vit_segment_ids[0][slot * 4]
            assert vit_sample.setdefault(frame, seg[pos]) == seg[pos]


def test_packed_logits_equal_each_sample_alone(tiny):
    rng = np.random.default_rng(0)
    samples = [random_sample(rng, 2, 9), random_sample(rng, 0, 12), random_sample(rng, 1, 5)]
    graphdef, state = nnx.split(tiny.jax)
    run = jax.jit(forward)
    bucket = Bucket(seq_len=sum(s.num_tokens for s in samples) + 7,
                    num_slots=sum(s.num_slots(CFG) for s in samples) + 16)  # fmt: skip
    together = packed(samples, bucket)
    logits = np.asarray(run(graphdef, state, together.inputs))[0]
    for k, s in enumerate(samples, start=1):
        alone = packed([s], Bucket(s.num_tokens, s.num_slots(CFG)))
        ref = np.asarray(run(graphdef, state, alone.inputs))[0]
        diff = np.abs(logits[together.segment_ids[0] == k] - ref).max()
        assert diff <= 1e-4, (k, diff)


def test_truncate_keeps_media_whole():
    rng = np.random.default_rng(1)
    s = random_sample(rng, 1, 40)
    cut = truncate(s, s.num_tokens - 10, CFG)
    assert cut is not None and cut.num_tokens == s.num_tokens - 10
    assert truncate(s, 3, CFG) is None  # would split the image's tokens
