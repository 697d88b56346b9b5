"""The one assembler: samples -> the fixed-shape `Batch` the device consumes.

Every host path goes through `assemble`: training (packed rows of several samples, right
padded, `pipeline.py`), padding rows (no samples), generation prompts (one sample per row,
left padded, `inference/generate.py`), evaluation, scoring and the parity tests (through the
processor-format edge, `hf_format.py`).

Within a row, samples sit back to back with segment ids 1, 2, ...; each keeps its own MRoPE
positions (restarting at 0); the media of the row share one ViT window layout whose
full-attention segments are unique across the row, so nothing attends across samples.

A row's item is a `Sample` or a *group*: a tuple of samples that share their media (a DPO
pair: one prompt's image, two replies). A group's media enter the ViT layout once and every
sample of the group gathers the same merged vision tokens, so the ViT and merger run once per
group; each sample still has its own segment (a lone Sample is a group of one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.layout import token_modalities, vision_layout
from qwen25vl_jax.data.sample import Sample
from qwen25vl_jax.model.inputs import Batch

Group = Sample | Sequence[Sample]


def _group(item: Group) -> tuple[Sample, ...]:
    """A row item as a tuple of samples sharing the media of its first (ValueError otherwise)."""
    group = (item,) if isinstance(item, Sample) else tuple(item)
    if not group:
        raise ValueError("an empty group of samples")
    shared = [(m.kind, m.grid) for m in group[0].media]
    for s in group[1:]:
        if [(m.kind, m.grid) for m in s.media] != shared:
            raise ValueError(
                f"a group's samples must share their media: {s.grids} vs {group[0].grids}"
            )
    return group


def assemble(
    rows: Sequence[Sequence[Group]],
    cfg: ModelConfig,
    *,
    seq_len: int,
    num_slots: int,
    padding: Literal["left", "right"] = "right",
    pad_id: int | None = None,
) -> Batch:
    """One `Batch` of B = len(rows) rows: L = seq_len tokens, N = num_slots ViT slots per row.

    rows: the items of each row, a `Sample` or a group of samples sharing their media (an empty
    row is all padding: segment ids 0, no loss); segment ids number the samples of a row 1, 2,
    ... in order, groups flattened.
    padding: where a row's pad tokens go: "right" (training) or "left" (generation prompts,
    so every row's last column is its last real token). pad_id: the token of pad positions
    (default: the model's <|endoftext|>, `bos_token_id`, in range for its vocabulary).
    Targets are the next token of the same sample; loss_mask is 1 where that target is
    supervised (the sample's loss mask). Shapes and dtypes: see `ModelInputs` / `Batch`.
    ValueError when a row's tokens exceed seq_len or its media exceed num_slots.
    """
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
    b, length, n, pd = len(rows), int(seq_len), int(num_slots), cfg.vision.patch_dim
    pad_id = cfg.bos_token_id if pad_id is None else pad_id
    tokens = np.full((b, length), pad_id, np.int32)
    segment_ids = np.zeros((b, length), np.int32)
    positions = np.zeros((3, b, length), np.int32)
    vision_index = np.full((b, length), -1, np.int32)
    patches = np.zeros((b, n, pd), np.float32)
    vit_positions = np.zeros((b, n, 2), np.int32)
    vit_segment_ids = np.zeros((b, n), np.int32)
    supervised = np.zeros((b, length), bool)
    for r, items in enumerate(rows):
        groups = [_group(item) for item in items]
        samples = [s for g in groups for s in g]
        used = sum(s.num_tokens for s in samples)
        if used > length:
            raise ValueError(f"row {r}: {used} tokens exceed seq_len {length}")
        at = length - used if padding == "left" else 0
        for i, s in enumerate(samples, start=1):
            sl = slice(at, at + s.num_tokens)
            tokens[r, sl], segment_ids[r, sl] = s.input_ids, i
            positions[:, r, sl], supervised[r, sl] = s.positions, s.loss_mask
            at += s.num_tokens
        media = [m for g in groups for m in g[0].media]  # each group's media once
        if not media:
            continue
        lay = vision_layout([m.grid for m in media], cfg.vision, num_slots=n)
        real = lay.patch_src >= 0
        pixels = media[0].patches if len(media) == 1 else np.concatenate([m.patches for m in media])
        patches[r, real] = pixels[lay.patch_src[real]]
        vit_positions[r], vit_segment_ids[r] = lay.vit_positions, lay.vit_segment_ids
        is_media = (token_modalities(tokens[r], cfg) > 0) & (segment_ids[r] > 0)
        # a group's merge units, gathered by each of its samples: k-th media token of a sample
        # <- k-th merge unit of its group
        ends = np.cumsum(
            [0] + [sum(m.num_tokens(cfg.vision.merge_unit) for m in g[0].media) for g in groups]
        )
        units = [lay.unit_slot[ends[k] : ends[k + 1]] for k, g in enumerate(groups) for _ in g]
        vision_index[r, is_media] = np.concatenate(units)
    # next-token targets inside each sample; supervised where the target is supervised
    same = np.zeros((b, length), bool)
    same[:, :-1] = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)
    targets = np.where(same, np.roll(tokens, -1, axis=1), 0).astype(np.int32)
    loss_mask = (same & np.roll(supervised, -1, axis=1)).astype(np.float32)
    return Batch(
        tokens=tokens,
        segment_ids=segment_ids,
        positions=positions,
        vision_index=vision_index,
        patches=patches,
        vit_positions=vit_positions,
        vit_segment_ids=vit_segment_ids,
        targets=targets,
        loss_mask=loss_mask,
    )
