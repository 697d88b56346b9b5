"""Generation prompts on the host: samples -> one left-padded, bucketed batch.

`prepare_batch` places the prompts (one `Sample` each) with left padding through the one
assembler (`data/assemble.py`), their length padded to a multiple of `length_bucket` and the ViT
slots to a bucket, and takes the `rope_deltas` of *these* prompts (`inference/generate.py`
decodes from them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.sample import Sample
from qwen25vl_jax.model.inputs import ModelInputs


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def geometric_bucket(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 1.5 * 2^k) that is >= n:
    at most ~1.5x padding, and few distinct shapes."""
    p = 1 << (max(int(n), 1) - 1).bit_length()  # the power of two >= n
    return 3 * (p >> 2) if 3 * (p >> 2) >= n else p


@dataclasses.dataclass(frozen=True)
class PreparedBatch:
    """A left-padded, bucketed prompt batch. inputs: `ModelInputs` with L = a multiple of the
    length bucket; rope_deltas, num_real: int32[B] (real prompt tokens per row)."""

    inputs: ModelInputs
    rope_deltas: np.ndarray
    num_real: np.ndarray

    @property
    def prompt_len(self) -> int:
        return self.inputs.tokens.shape[1]


def prepare_batch(
    cfg: ModelConfig,
    prompts: Sequence[Sample],
    *,
    length_bucket: int = 64,
    patch_bucket: int | None = None,
    pad_token: int | None = None,
) -> PreparedBatch:
    """Prompt samples (one per row) -> `PreparedBatch`, left padded.

    length_bucket: the prompt length is rounded up to a multiple of it. patch_bucket: the ViT
    slots per row are rounded up to a multiple of it (a multiple of `window_patches`); None =
    a geometric bucket of windows (1, 2, 3, 4, 6, 8, 12, ... windows): the ViT's full-attention
    layers cost grows with the square of the slots, so fixed coarse multiples waste the most.
    pad_token: the token of pad positions (default: bos).
    """
    num_real = np.asarray([s.num_tokens for s in prompts], np.int32)
    if not len(prompts) or (num_real == 0).any():
        raise ValueError("every row needs at least one prompt token")
    slots, wp = max(s.num_slots(cfg) for s in prompts), cfg.vision.window_patches
    if slots and patch_bucket is None:
        slots = geometric_bucket(slots // wp) * wp
    elif slots and patch_bucket % wp:
        raise ValueError(f"patch_bucket {patch_bucket} is not a multiple of {wp} patches")
    elif slots:
        slots = round_up(slots, patch_bucket)
    batch = assemble(
        [[s] for s in prompts],
        cfg,
        seq_len=round_up(num_real.max(), length_bucket),
        num_slots=slots,
        padding="left",
        pad_id=pad_token,
    )
    deltas = np.asarray([s.rope_delta for s in prompts], np.int32)
    return PreparedBatch(batch.inputs, deltas, num_real)
