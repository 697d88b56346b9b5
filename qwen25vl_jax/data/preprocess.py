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


def sample_nbytes(sample: Sample) -> int:
    """Bytes of a sample's arrays (token ids, mask, positions, media patches)."""
    arrays = (sample.input_ids, sample.loss_mask, sample.positions)
    return sum(a.nbytes for a in arrays) + sum(m.patches.nbytes for m in sample.media)


def read_only(sample: Sample) -> Sample:
    """`sample` with its arrays made read-only: a cached sample is handed out again and again,
    so a consumer that wrote into one would change every later copy; now it raises instead."""
    for a in (
        sample.input_ids,
        sample.loss_mask,
        sample.positions,
        *(m.patches for m in sample.media),
    ):
        a.flags.writeable = False
    return sample


class Preprocess:
    """The worker-side map: (index, (record_id, payload bytes)) -> {"sample", "truncated",
    "index"} or, when bad records are skipped, {"error": reason, "record_id", "detail"}.
    Picklable into Grain workers.

    With ``config.sample_cache_mb`` > 0 each process keeps the samples it made, by record id,
    until they fill that many MiB, and serves the record's later epochs from memory: decoding
    and resizing are most of a sample's cost, and preprocessing is a pure function of the
    record. Bad records are not cached (each epoch reports them again)."""

    def __init__(self, cfg: ModelConfig, tokenizer: Any, config: PipelineConfig):
        self.cfg, self.tokenizer, self.config = cfg, tokenizer, config
        self._cache: dict[str, tuple[Sample, bool]] = {}
        self._cache_bytes = 0

    def __call__(self, index: int, raw: tuple[str, bytes]) -> dict[str, Any]:
        record_id, payload = raw
        if record_id in self._cache:
            sample, cut = self._cache[record_id]
            return {"sample": sample, "truncated": cut, "index": index}
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
        size = sample_nbytes(sample)
        if self._cache_bytes + size <= c.sample_cache_mb * 2**20:
            self._cache[record_id] = (read_only(sample), cut)
            self._cache_bytes += size
        return {"sample": sample, "truncated": cut, "index": index}
