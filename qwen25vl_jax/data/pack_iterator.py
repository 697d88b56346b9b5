"""Packing a stream of preprocessed samples into fixed-shape `Batch`es, with exact, JSON-able
iterator state (a Grain IterDataset; see `pipeline.py` for where it sits).

The state is (parent state at the window's first new sample, [index, age] of the carried
samples, batches of the window already emitted, counters). Restoring recomputes the carried
samples by index from the preprocessed MapDataset, re-reads the window and skips what was
emitted, so a restored iterator yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import grain

from qwen25vl_jax.cli_errors import InputError
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.pipeline_counts import new_counts
from qwen25vl_jax.data.row_balance import sample_flops
from qwen25vl_jax.data.sample import Sample
from qwen25vl_jax.data.window_plan import plan_window
from qwen25vl_jax.model.inputs import Batch


class TooManyBadRecords(InputError):
    """So many consecutive records were bad that the data (or its media root) must be wrong."""


@dataclasses.dataclass
class _Window:
    start: Any  # parent state before the window's first new element
    carry_in: list[list[int]]  # [index, age] of the samples carried into the window
    counts: dict[str, Any]  # counters before the window was read
    samples: list[Sample]
    indices: list[int]  # index of each sample in the sharded dataset (for restore)
    batches: list[tuple[int, list[list[int]]]]
    carry_out: list[list[int]]


class PackIterator(grain.DatasetIterator):
    """Iterator of `PackIterDataset`: yields `Batch`es; ``.counts`` = the pipeline counters."""

    def __init__(self, parent: grain.DatasetIterator, ds: PackIterDataset):
        super().__init__(parent)
        self._ds = ds
        self._counts = new_counts()
        self._window: _Window | None = None
        self._emitted = 0  # batches of the window already out (to skip after set_state)
        self._carry: list[list[int]] = []  # [index, age] carried into the next window
        self._carried: dict[int, Sample] = {}  # their samples, when in memory
        self._bad_in_a_row = 0  # not in the state: a restored iterator counts afresh

    @property
    def counts(self) -> dict[str, Any]:
        return copy.deepcopy(self._counts)

    def _read_window(self) -> _Window:
        d, counts = self._ds, copy.deepcopy(self._counts)
        start = self._parent.get_state()
        samples, indices = [], []
        for index, _ in self._carry:  # recomputed from the dataset only after a restore
            sample = self._carried.pop(index, None) or d.lookup[index]["sample"]
            samples.append(sample)
            indices.append(index)
        new, final = 0, False
        while new < d.lookahead:
            try:
                element = next(self._parent)
            except StopIteration:
                final = True
                break
            self._counts["records"] += 1
            if "error" in element:
                self._counts["skipped"][element["error"]] += 1
                self._bad_in_a_row += 1
                if self._bad_in_a_row >= d.max_consecutive_bad:
                    raise TooManyBadRecords(
                        f"{self._bad_in_a_row} bad records in a row (skipped so far: "
                        f"{ {k: v for k, v in self._counts['skipped'].items() if v} }); the "
                        f"last: record {element['record_id']}: {element['error']}: "
                        f"{element['detail']}"
                    )
                continue
            self._bad_in_a_row = 0
            self._counts["truncated"] += int(element["truncated"])
            samples.append(element["sample"])
            indices.append(element["index"])
            new += 1
        ages = [age for _, age in self._carry] + [0] * new
        batches, carry = plan_window(
            [(s.num_tokens, s.num_slots(d.cfg)) for s in samples],
            d.buckets,
            d.batch_size,
            min_fill=d.min_fill,
            max_carry=d.max_carry,
            final=final,
            forced=[k for k, a in enumerate(ages) if a >= d.max_age],
            costs=[sample_flops(d.cfg, s.num_tokens, s.grids) for s in samples]
            if d.balance
            else None,
        )
        carry_out = [[indices[k], ages[k] + 1] for k in carry]
        self._carried = {indices[k]: samples[k] for k in carry}
        window = _Window(start, self._carry, counts, samples, indices, batches, carry_out)
        self._carry = carry_out
        return window

    def _count_batch(self, h: int, bins: list[list[int]]) -> None:
        c, bucket, samples = self._counts, self._ds.buckets_sorted[h], self._window.samples
        c["batches"] += 1
        c["samples"] += sum(map(len, bins))
        c["examples"] += self._ds.batch_size
        c["padding_examples"] += self._ds.batch_size - len(bins)
        c["real_tokens"] += sum(samples[i].num_tokens for b in bins for i in b)
        c["real_patches"] += sum(samples[i].num_patches for b in bins for i in b)
        c["token_capacity"] += self._ds.batch_size * bucket.seq_len
        c["patch_capacity"] += self._ds.batch_size * bucket.num_slots

    def __next__(self) -> Batch:
        d = self._ds
        while self._window is None or self._emitted == len(self._window.batches):
            skip = self._emitted if self._window is None else 0  # > 0 only after set_state
            self._window, self._emitted = self._read_window(), 0
            if not self._window.samples:
                self._window = None
                raise StopIteration
            for h, bins in self._window.batches[:skip]:
                self._count_batch(h, bins)
            self._emitted = skip  # a window may emit nothing (all carried): read the next
        h, bins = self._window.batches[self._emitted]
        self._emitted += 1
        self._count_batch(h, bins)
        bucket, samples = d.buckets_sorted[h], self._window.samples
        rows = [[samples[i] for i in b] for b in bins] + [[]] * (d.batch_size - len(bins))
        return assemble(
            rows, d.cfg, seq_len=bucket.seq_len, num_slots=bucket.num_slots, pad_id=d.pad_id
        )

    def get_state(self) -> dict[str, Any]:
        w = self._window
        if w is not None and self._emitted < len(w.batches):
            return {
                "parent": w.start,
                "carry": copy.deepcopy(w.carry_in),
                "emitted": self._emitted,
                "counts": copy.deepcopy(w.counts),
            }
        # between windows (or restored and not yet re-read: _emitted batches still to skip)
        return {
            "parent": self._parent.get_state(),
            "carry": copy.deepcopy(self._carry),
            "emitted": self._emitted if w is None else 0,
            "counts": copy.deepcopy(self._counts),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._window, self._carried = None, {}
        self._carry = [[int(i), int(a)] for i, a in state["carry"]]
        self._emitted = int(state["emitted"])
        self._counts = copy.deepcopy(state["counts"])


class PackIterDataset(grain.IterDataset):
    """Packs a stream of preprocessed elements (see `Preprocess`) into `Batch`es with exact,
    JSON-able iterator state. Batch arrays: tokens int32[B, L], positions int32[3, B, L],
    patches float32[B, N, 1176], ... (see `Batch`), (L, N) one of the buckets.

    ``lookup`` is the preprocessed MapDataset the parent iterates (``lookup[i]`` = the element
    with index i): a restored iterator recomputes its carried samples from it. ``balance``:
    rows of even compute cost (see `plan_window`'s ``costs``), else rows as packed.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        lookup: grain.MapDataset,
        *,
        cfg: ModelConfig,
        buckets: Sequence[Bucket],
        batch_size: int,
        lookahead: int,
        min_fill: float = 0.97,
        max_carry: int | None = None,
        max_age: int = 4,
        pad_id: int | None = None,
        max_consecutive_bad: int = 1000,
        balance: bool = True,
    ):
        super().__init__(parent)
        self.lookup, self.cfg, self.buckets = lookup, cfg, tuple(buckets)
        self.pad_id = cfg.bos_token_id if pad_id is None else pad_id  # the model's <|endoftext|>
        self.batch_size, self.lookahead, self.min_fill = batch_size, lookahead, min_fill
        self.max_carry = lookahead if max_carry is None else max_carry
        self.max_age, self.max_consecutive_bad = max_age, max(1, max_consecutive_bad)
        self.balance = balance
        self.buckets_sorted = sorted(self.buckets, key=lambda b: (b.seq_len, b.num_slots))
        for b in self.buckets:
            if b.num_slots % cfg.vision.window_patches:
                raise ValueError(f"{b}: num_slots not a multiple of {cfg.vision.window_patches}")

    def __iter__(self) -> PackIterator:
        return PackIterator(self._parent.__iter__(), self)
