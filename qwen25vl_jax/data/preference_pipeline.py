"""The DPO input pipeline: preference records -> `Pair`s -> packed `PreferenceBatch`es, with
exact, JSON-able iterator state.

    RecordSource ─► shuffle(seed) ─► repeat ─► slice(process_index::process_count)
      ─► map(PreferencePreprocess)   record -> Pair (media decoded once), in workers
      ─► PairIterator                pairs -> rows of <= P pairs -> PreferenceBatch

The source, shuffling, sharding and workers are the SFT pipeline's (`pipeline.preprocessed_stream`,
same `PipelineConfig`, same skip-and-count policy for bad records and `TooManyBadRecords`). One
bucket (L, N): a pair whose two replies and shared media do not fit a row is a "too_long" bad
record (replies are not cut: a cut reply would change what is preferred).

Packing is greedy in stream order: a pair goes into the current row while the row has fewer
than P pairs and the budgets hold, else into the next row; a pair that fits no row of the
batch opens the next batch. So the state is (parent state before the first pair not yet in a
batch, counters): a restored iterator re-reads that pair and yields exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import copy
from typing import Any

import grain

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.pack_iterator import TooManyBadRecords
from qwen25vl_jax.data.pipeline import PipelineConfig, preprocessed_stream
from qwen25vl_jax.data.pipeline_counts import new_counts
from qwen25vl_jax.data.preference import Pair, preference_batch, record_to_pair
from qwen25vl_jax.data.records import RecordError
from qwen25vl_jax.model.inputs import PreferenceBatch


class PreferencePreprocess:
    """The worker-side map: (index, (record_id, payload)) -> {"pair", "index"} or, when bad
    records are skipped, {"error": reason, "record_id", "detail"}. Picklable into workers."""

    def __init__(self, cfg: ModelConfig, tokenizer: Any, config: PipelineConfig):
        self.cfg, self.tokenizer, self.config = cfg, tokenizer, config

    def __call__(self, index: int, raw: tuple[str, bytes]) -> dict[str, Any]:
        record_id, payload = raw
        c, bucket = self.config, self.config.buckets[0]
        try:
            pair = record_to_pair(
                payload, record_id, cfg=self.cfg, tokenizer=self.tokenizer, options=c.records
            )
            tokens, slots = pair.num_tokens, pair.num_slots(self.cfg)
            if not bucket.fits(tokens, slots):
                raise RecordError(
                    record_id,
                    "too_long",
                    f"the pair needs {tokens} tokens and {slots} ViT slots; a row holds "
                    f"{bucket.seq_len} and {bucket.num_slots}",
                )
        except RecordError as err:
            if c.on_bad_record == "raise":
                raise
            return {"error": err.reason, "record_id": err.record_id, "detail": err.detail}
        return {"pair": pair, "index": index}


class PairIterator(grain.DatasetIterator):
    """Yields `PreferenceBatch`es of `batch_size` rows x `pairs_per_row` pairs; ``.counts`` =
    the pipeline counters (a pair counts as one record and two samples)."""

    def __init__(self, parent: grain.DatasetIterator, ds: PreferenceIterDataset):
        super().__init__(parent)
        self._ds = ds
        self._counts = new_counts()
        self._pending: tuple[Any, Pair] | None = None  # (parent state before it, the pair)
        self._bad_in_a_row = 0  # not in the state: a restored iterator counts afresh

    @property
    def counts(self) -> dict[str, Any]:
        return copy.deepcopy(self._counts)

    def _next_pair(self) -> tuple[Any, Pair] | None:
        """(parent state before it, the next good pair), None at the end; counts bad ones."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        while True:
            before = self._parent.get_state()
            try:
                element = next(self._parent)
            except StopIteration:
                return None
            if "error" not in element:
                self._bad_in_a_row = 0
                return before, element["pair"]
            self._counts["records"] += 1
            self._counts["skipped"][element["error"]] += 1
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= self._ds.max_consecutive_bad:
                raise TooManyBadRecords(
                    f"{self._bad_in_a_row} bad records in a row; the last: record "
                    f"{element['record_id']}: {element['error']}: {element['detail']}"
                )

    def __next__(self) -> PreferenceBatch:
        d, c = self._ds, self._counts
        rows: list[list[Pair]] = [[] for _ in range(d.batch_size)]
        used = [[0, 0] for _ in range(d.batch_size)]
        r = 0
        while (item := self._next_pair()) is not None:
            pair = item[1]
            tokens, slots = pair.num_tokens, pair.num_slots(d.cfg)
            while r < d.batch_size and not (
                len(rows[r]) < d.pairs_per_row
                and used[r][0] + tokens <= d.bucket.seq_len
                and used[r][1] + slots <= d.bucket.num_slots
            ):
                r += 1
            if r == d.batch_size:  # the batch is full: this pair opens the next one
                self._pending = item
                break
            rows[r].append(pair)
            used[r] = [used[r][0] + tokens, used[r][1] + slots]
            c["records"] += 1
            c["samples"] += 2
            c["real_tokens"] += tokens
            c["real_patches"] += pair.num_patches
        if not rows[0]:
            raise StopIteration
        c["batches"] += 1
        c["examples"] += d.batch_size
        c["padding_examples"] += sum(not row for row in rows)
        c["token_capacity"] += d.batch_size * d.bucket.seq_len
        c["patch_capacity"] += d.batch_size * d.bucket.num_slots
        return preference_batch(
            rows,
            d.cfg,
            seq_len=d.bucket.seq_len,
            num_slots=d.bucket.num_slots,
            pairs_per_row=d.pairs_per_row,
            pad_id=d.pad_id,
        )

    def get_state(self) -> dict[str, Any]:
        parent = self._pending[0] if self._pending is not None else self._parent.get_state()
        return {"parent": parent, "counts": copy.deepcopy(self._counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._pending = None
        self._counts = copy.deepcopy(state["counts"])


class PreferenceIterDataset(grain.IterDataset):
    """Packs a stream of preprocessed pairs into `PreferenceBatch`es (see `PairIterator`)."""

    def __init__(
        self, parent: grain.IterDataset, config: PipelineConfig, cfg: ModelConfig, pairs: int
    ):
        super().__init__(parent)
        if len(config.buckets) != 1:
            raise ValueError(f"the preference pipeline takes one bucket, got {config.buckets}")
        self.cfg, self.bucket, self.pairs_per_row = cfg, config.buckets[0], pairs
        self.batch_size = config.batch_size
        self.pad_id = cfg.bos_token_id if config.pad_id is None else config.pad_id
        self.max_consecutive_bad = max(1, config.max_consecutive_bad)
        if self.bucket.num_slots % cfg.vision.window_patches:
            raise ValueError(f"{self.bucket}: num_slots not a multiple of the ViT window")

    def __iter__(self) -> PairIterator:
        return PairIterator(self._parent.__iter__(), self)


def make_preference_iterator(
    config: PipelineConfig,
    cfg: ModelConfig,
    tokenizer: Any,
    *,
    pairs_per_row: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PairIterator:
    """This host's iterator of `PreferenceBatch`es (its shard of the records); state as
    `PairIterator`; `.close()` where available stops the worker processes."""
    it, _ = preprocessed_stream(
        config,
        PreferencePreprocess(cfg, tokenizer, config),
        process_index=process_index,
        process_count=process_count,
    )
    return iter(PreferenceIterDataset(it, config, cfg, pairs_per_row))
