"""Planning the packing of samples into fixed budgets: text length L and ViT slots N per row.

A packed row concatenates whole samples (`assemble.assemble` places them: segment ids keep
attention inside each sample and inside each image / video frame; each sample keeps its own
MRoPE positions). This file only decides which samples share a row.

Packing is first-fit-decreasing over a look-ahead window of samples: deterministic given the
window, so a pipeline can resume by re-reading the window (see `pipeline.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.layout import token_modalities
from qwen25vl_jax.data.sample import Sample


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One compiled shape: text length and ViT slots (a multiple of window_patches) per example."""

    seq_len: int
    num_slots: int

    def fits(self, tokens: int, slots: int) -> bool:
        return tokens <= self.seq_len and slots <= self.num_slots


def choose_bucket(tokens: int, slots: int, buckets: Sequence[Bucket]) -> Bucket:
    """The smallest bucket (by seq_len, then slots) that holds the example."""
    for b in sorted(buckets, key=lambda b: (b.seq_len, b.num_slots)):
        if b.fits(tokens, slots):
            return b
    raise ValueError(f"no bucket holds {tokens} tokens and {slots} ViT slots: {list(buckets)}")


def first_fit_decreasing(sizes: Sequence[tuple[int, int]], bucket: Bucket) -> list[list[int]]:
    """Bins of sample indices: largest samples (by text share + vision share) first, each into
    the first bin where both budgets still fit. Each bin lists indices in input order."""
    order = sorted(
        range(len(sizes)),
        key=lambda i: -(sizes[i][0] / bucket.seq_len + sizes[i][1] / max(bucket.num_slots, 1)),
    )
    bins: list[list[int]] = []
    used: list[list[int]] = []
    for i in order:
        t, s = sizes[i]
        if not bucket.fits(t, s):
            raise ValueError(f"sample {i} ({t} tokens, {s} slots) exceeds {bucket}")
        for b, (bt, bs) in enumerate(used):
            if bucket.fits(bt + t, bs + s):
                bins[b].append(i)
                used[b] = [bt + t, bs + s]
                break
        else:
            bins.append([i])
            used.append([t, s])
    return [sorted(b) for b in bins]


def truncate(sample: Sample, seq_len: int, cfg: ModelConfig) -> Sample | None:
    """The sample cut to `seq_len` tokens, or None when the cut would split a media's tokens
    (its patches could no longer be placed)."""
    if sample.num_tokens <= seq_len:
        return sample
    vision = np.flatnonzero(token_modalities(sample.input_ids, cfg))
    last_media = vision.max() if len(vision) else -1
    if last_media >= seq_len:
        return None
    return dataclasses.replace(
        sample,
        input_ids=sample.input_ids[:seq_len],
        loss_mask=sample.loss_mask[:seq_len],
        positions=sample.positions[:, :seq_len],
    )
