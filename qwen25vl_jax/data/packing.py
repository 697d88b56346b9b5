"""Packing samples into fixed budgets: text length L and ViT slots N per example.

A packed example concatenates whole samples. Segment ids keep attention inside each sample (the
decoder's mask) and inside each image / video frame (the ViT's full-attention mask, ids unique
across the example); positions restart at 0 per sample; each sample keeps its own MRoPE.

Packing is first-fit-decreasing over a look-ahead window of samples: deterministic given the
window, so a pipeline can resume by re-reading the window (see `pipeline.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.batch import Sample
from qwen25vl_jax.model.indices import token_modalities, vision_layout


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


def assemble_example(
    samples: Sequence[Sample], bucket: Bucket, cfg: ModelConfig, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One packed example (no batch axis); keys = `Batch` fields, positions int32[3, L]."""
    length, n = bucket.seq_len, bucket.num_slots
    tokens = np.full(length, pad_id, np.int32)
    segment_ids = np.zeros(length, np.int32)
    positions = np.zeros((3, length), np.int32)
    loss_mask = np.zeros(length, bool)
    at = 0
    for i, s in enumerate(samples):
        sl = slice(at, at + s.num_tokens)
        tokens[sl], segment_ids[sl], positions[:, sl], loss_mask[sl] = (
            s.input_ids,
            i + 1,
            s.positions,
            s.loss_mask,
        )
        at += s.num_tokens
    if at > length:
        raise ValueError(f"{at} tokens exceed seq_len {length}")
    grids = [g for s in samples for g in s.grids]
    lay = vision_layout(grids, cfg.vision, num_slots=n)
    patches = np.zeros((n, cfg.vision.patch_dim), np.float32)
    if n:
        real = lay.patch_src >= 0
        all_patches = np.concatenate([s.patches for s in samples])
        patches[real] = all_patches[lay.patch_src[real]]
    vision_index = np.full(length, -1, np.int32)
    is_media = token_modalities(tokens, cfg) > 0
    is_media &= segment_ids > 0
    vision_index[is_media] = lay.unit_slot  # k-th media token <- k-th merge unit, in order
    # next-token targets inside each sample; supervised where the target is an assistant token
    same = np.zeros(length, bool)
    same[:-1] = (segment_ids[1:] == segment_ids[:-1]) & (segment_ids[:-1] > 0)
    targets = np.where(same, np.roll(tokens, -1), 0).astype(np.int32)
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "positions": positions,
        "vision_index": vision_index,
        "patches": patches,
        "vit_positions": lay.vit_positions,
        "vit_segment_ids": lay.vit_segment_ids,
        "targets": targets,
        "loss_mask": (same & np.roll(loss_mask, -1)).astype(np.float32),
    }
