"""`Sample` (one tokenized conversation with its media, host side) and `Batch` (what the model
and the trainer consume: fixed-shape arrays, one compiled program per bucket)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.indices import layout_slots, sample_rope_positions, token_modalities
from qwen25vl_jax.model.inputs import ModelInputs, inputs_from_hf


@dataclasses.dataclass(frozen=True)
class Sample:
    """One tokenized sample with its host-side indices.

    input_ids: int32[n]. loss_mask: bool[n], True on tokens to predict (assistant replies).
    positions: int32[3, n] MRoPE positions of the sample alone (starting at 0).
    patches: float32[p, patch_dim], the media in order of appearance, reference patch order.
    grids: int64[m, 3] (t, h, w) per media. kinds: m strings "image" / "video".
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    patches: np.ndarray
    grids: np.ndarray
    kinds: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def num_slots(self, cfg: ModelConfig) -> int:
        """ViT slots of this sample's window layout."""
        return layout_slots(self.grids, cfg.vision)


def make_sample(
    cfg: ModelConfig,
    input_ids: np.ndarray,
    loss_mask: np.ndarray,
    media: Sequence[tuple[str, np.ndarray, Sequence[int], float | None]] = (),
) -> Sample:
    """Builds a `Sample`; media = (kind, pixel_values [p, patch_dim], grid_thw, second_per_grid_t
    or None for images) in order of appearance in `input_ids`."""
    ids = np.asarray(input_ids, np.int32)
    kinds = tuple(m[0] for m in media)
    grids = np.asarray([m[2] for m in media], np.int64).reshape(-1, 3)
    mods = token_modalities(ids, cfg)
    for kind, code in (("image", 1), ("video", 2)):
        want = sum(
            int(np.prod(g)) // cfg.vision.merge_unit for k, g in zip(kinds, grids) if k == kind
        )
        if int((mods == code).sum()) != want:
            raise ValueError(f"{int((mods == code).sum())} {kind} pad tokens, media need {want}")
    spg = [m[3] for m in media if m[0] == "video"]
    positions = sample_rope_positions(
        mods,
        [g for k, g in zip(kinds, grids) if k == "image"],
        [g for k, g in zip(kinds, grids) if k == "video"],
        spg if spg else None,
        cfg,
    )
    patches = [np.asarray(m[1], np.float32) for m in media]
    return Sample(
        input_ids=ids,
        loss_mask=np.asarray(loss_mask, bool),
        positions=positions.astype(np.int32),
        patches=np.concatenate(patches)
        if patches
        else np.zeros((0, cfg.vision.patch_dim), np.float32),
        grids=grids,
        kinds=kinds,
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch(ModelInputs):
    """`ModelInputs` plus the training targets.

    targets: int32[B, L], the next token of the same sample (0 where there is none).
    loss_mask: float32[B, L], 1 where `targets` is supervised (an assistant token of the same
    sample), 0 elsewhere. Fields inherited from ModelInputs: tokens, segment_ids, positions,
    vision_index, patches, vit_positions, vit_segment_ids (see there).
    """

    targets: np.ndarray = None
    loss_mask: np.ndarray = None

    @property
    def inputs(self) -> ModelInputs:
        return ModelInputs(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelInputs)}
        )


def stack_examples(examples: Sequence[dict[str, np.ndarray]]) -> Batch:
    """Stacks per-example arrays (as `packing.assemble_example` returns) into a Batch."""
    names = [f.name for f in dataclasses.fields(Batch)]
    arrays = {k: np.stack([e[k] for e in examples]) for k in names if k != "positions"}
    arrays["positions"] = np.stack([e["positions"] for e in examples], axis=1)  # [3, B, L]
    return Batch(**arrays)


def batch_from_hf(cfg: ModelConfig, arrays: dict, supervised: np.ndarray) -> Batch:
    """A training `Batch` from Hugging Face processor arrays (`input_ids`, `attention_mask`,
    pixel / grid arrays) and `supervised` bool[B, L]: the tokens to predict (as labels != -100
    in transformers; the shift to next-token targets happens here)."""
    media = {k: v for k, v in arrays.items() if k not in ("input_ids", "attention_mask")}
    inputs, _ = inputs_from_hf(cfg, arrays["input_ids"], arrays.get("attention_mask"), **media)
    targets = np.zeros_like(inputs.tokens)
    targets[:, :-1] = inputs.tokens[:, 1:]
    loss_mask = np.zeros(inputs.tokens.shape, np.float32)
    loss_mask[:, :-1] = np.asarray(supervised, bool)[:, 1:]
    fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(ModelInputs)}
    return Batch(**fields, targets=targets, loss_mask=loss_mask)
