"""The worker-side map of the training pipeline: a record's bytes -> a `Sample` that fits a
bucket (cut to fit if allowed), or, when bad records are skipped, the reason it was dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.packing import Bucket, truncate
from qwen25vl_jax.data.records import RecordError, record_to_sample
from qwen25vl_jax.data.sample import Sample

if TYPE_CHECKING:
    from qwen25vl_jax.data.pipeline import PipelineConfig


def fit_sample(
    sample: Sample, buckets: Sequence[Bucket], cfg: ModelConfig, oversize: str, record_id: str
) -> tuple[Sample, bool]:
    """(sample, False) if a bucket holds it, (cut sample, True) if truncation makes it fit;
    else RecordError "too_long". A cut that leaves no supervised target also fails."""
    tokens, slots = sample.num_tokens, sample.num_slots(cfg)
    if any(b.fits(tokens, slots) for b in buckets):
        return sample, False
    why = (
        f"{tokens} tokens, {slots} ViT slots; buckets {[(b.seq_len, b.num_slots) for b in buckets]}"
    )
    holders = [b.seq_len for b in buckets if b.num_slots >= slots]
    if oversize == "truncate" and holders:
        cut = truncate(sample, max(holders), cfg)
        if cut is not None and cut.loss_mask[1:].any():
            return cut, True
        why += " (truncation would cut a media or every reply token)"
    raise RecordError(record_id, "too_long", why)


class Preprocess:
    """The worker-side map: (index, (record_id, payload bytes)) -> {"sample", "truncated",
    "index"} or, when bad records are skipped, {"error": reason, "record_id", "detail"}.
    Picklable into Grain workers."""

    def __init__(self, cfg: ModelConfig, tokenizer: Any, config: PipelineConfig):
        self.cfg, self.tokenizer, self.config = cfg, tokenizer, config

    def __call__(self, index: int, raw: tuple[str, bytes]) -> dict[str, Any]:
        record_id, payload = raw
        c = self.config
        try:
            sample = record_to_sample(
                payload, record_id, cfg=self.cfg, tokenizer=self.tokenizer, options=c.records
            )
            sample, cut = fit_sample(sample, c.buckets, self.cfg, c.oversize, record_id)
        except RecordError as err:
            if c.on_bad_record == "raise":
                raise
            return {"error": err.reason, "record_id": err.record_id, "detail": err.detail}
        return {"sample": sample, "truncated": cut, "index": index}
