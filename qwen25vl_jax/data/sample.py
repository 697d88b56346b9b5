"""`Sample`: the host's one currency — one tokenized conversation with its media and its own 3-D
positions — and the ways to make one: from token ids + media (`make_sample`) and from chat
messages + media (`encode_sample`, what training records, evaluation, the generate CLI and
library users call). `assemble.assemble` places samples into a fixed-shape `Batch`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.chat import encode_chat
from qwen25vl_jax.data.layout import layout_slots, sample_rope_positions, token_modalities
from qwen25vl_jax.data.media import Media


@dataclasses.dataclass(frozen=True)
class Sample:
    """One tokenized sample with its host-side indices.

    input_ids: int32[n]. loss_mask: bool[n], True on tokens to predict (assistant replies).
    positions: int32[3, n] MRoPE positions of the sample alone (starting at 0).
    media: its images / videos in order of appearance in `input_ids`.
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    media: tuple[Media, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_patches(self) -> int:
        return sum(len(m.patches) for m in self.media)

    @property
    def grids(self) -> list[tuple[int, int, int]]:
        return [m.grid for m in self.media]

    @property
    def rope_delta(self) -> int:
        """Where decoding continues: (largest position + 1) - num_tokens (`rope_deltas`)."""
        return (int(self.positions.max()) + 1 if self.num_tokens else 0) - self.num_tokens

    def num_slots(self, cfg: ModelConfig) -> int:
        """ViT slots of this sample's window layout."""
        return layout_slots(self.grids, cfg.vision)


def sample_to_tree(sample: Sample) -> dict[str, Any]:
    """The sample as dicts and tuples of its arrays, for Grain's worker processes: they move the
    NumPy leaves of a pytree through shared memory and pickle every other leaf into a pipe, and
    a dataclass is one leaf. A pickled sample (~0.3-0.7 MB of patches) left half-sent in the
    pipe when training ends kept the worker from exiting: 25 s until Grain killed it."""
    media = tuple({f.name: getattr(m, f.name) for f in dataclasses.fields(m)} for m in sample.media)
    return {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)} | {"media": media}


def sample_from_tree(tree: Mapping[str, Any]) -> Sample:
    """The inverse of `sample_to_tree`."""
    return Sample(**{**tree, "media": tuple(Media(**m) for m in tree["media"])})


def make_sample(
    cfg: ModelConfig,
    input_ids: np.ndarray,
    loss_mask: np.ndarray | None = None,
    media: Sequence[Media] = (),
) -> Sample:
    """Builds a `Sample` from token ids int[n] (with each medium's pad tokens expanded), the loss
    mask bool[n] (None: nothing supervised) and the media in order of appearance. ValueError
    when the pad tokens do not match the media (named as a tokenizer / config mismatch when
    token ids fall outside the model's vocabulary, the usual cause)."""
    ids = np.asarray(input_ids, np.int32).reshape(-1)
    media = tuple(media)
    mods = token_modalities(ids, cfg)
    for kind, code in (("image", 1), ("video", 2)):
        want = sum(m.num_tokens(cfg.vision.merge_unit) for m in media if m.kind == kind)
        if int((mods == code).sum()) != want:
            problem = f"{int((mods == code).sum())} {kind} pad tokens, media need {want}"
            raise ValueError(_vocabulary_problem(ids, cfg, problem) or problem)
    videos = [m for m in media if m.kind == "video"]
    timing = [m.second_per_grid_t for m in videos]
    if None in timing and any(t is not None for t in timing):
        raise ValueError("either every video or none has a second_per_grid_t")
    positions = sample_rope_positions(
        mods,
        [m.grid for m in media if m.kind == "image"],
        [m.grid for m in videos],
        timing if videos and timing[0] is not None else None,
        cfg,
    )
    mask = np.zeros(len(ids), bool) if loss_mask is None else np.asarray(loss_mask, bool)
    if mask.shape != ids.shape:
        raise ValueError(f"loss_mask has shape {mask.shape}, input_ids {ids.shape}")
    return Sample(ids, mask, positions.astype(np.int32), media)


def _vocabulary_problem(ids: np.ndarray, cfg: ModelConfig, detail: str) -> str | None:
    """The message for token ids outside the model's vocabulary (None when all are inside)."""
    vocab = cfg.text.vocab_size
    outside = ids[(ids < 0) | (ids >= vocab)]
    if not len(outside):
        return None
    return (
        f"'input_ids' holds token id {int(outside[0])}, outside the model's vocabulary "
        f"[0, {vocab}): is the tokenizer the model's? ({detail})"
    )


def encode_sample(
    cfg: ModelConfig,
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    media: Sequence[Media] = (),
    *,
    add_generation_prompt: bool = False,
    default_system: bool = True,
) -> Sample:
    """Chat messages (as `chat.encode_chat` takes them, media as {"type": "image" / "video"}
    items) and their media in order -> `Sample`; the loss mask covers the assistant replies.
    add_generation_prompt: end with the assistant header (a generation prompt). ValueError for
    messages the template rejects or media that do not match the placeholders."""
    counts = {
        k: [m.num_tokens(cfg.vision.merge_unit) for m in media if m.kind == k]
        for k in ("image", "video")
    }
    ids, mask = encode_chat(
        tokenizer,
        messages,
        image_token_counts=counts["image"],
        video_token_counts=counts["video"],
        add_generation_prompt=add_generation_prompt,
        default_system=default_system,
    )
    return make_sample(cfg, ids, mask, media)
