"""The Grain input pipeline: records -> shuffle -> shard -> preprocess (workers) -> pack -> Batch.

    RecordSource (JSONL / ArrayRecord) ─► MapDataset.shuffle(seed) ─► repeat(epochs)
      ─► slice(process_index::process_count)     each JAX process reads a disjoint shard
      ─► map(Preprocess)                         record -> Sample, in mp_prefetch workers
      ─► PackIterDataset                         look-ahead windows -> packed `Batch`es

Packing works on look-ahead windows (`plan_window`): a window is the samples carried over from
the previous window plus the next `lookahead` samples; they are packed first-fit-decreasing;
bins filled to `min_fill` are emitted as whole batches, the others' samples are carried into
the next window (at most `max_carry` samples, each at most `max_age` times), so that a window
never ends with a half-empty bin. The packer's state is small, JSON-able and exact: (parent
state at the window's first new sample, [index, age] of the carried samples, batches of the
window already emitted, counters). Restoring recomputes the carried samples by index from the
preprocessed MapDataset, re-reads the window and skips what was emitted, so a restored
iterator yields exactly the batches an uninterrupted one would.

Bucket per batch: every sample has a home bucket (the smallest that holds it alone); bins of
one bucket are batched together. A batch a window cannot fill is completed with empty examples
(segment id 0, no loss). With several buckets, hosts may pick different shapes at the same step:
multi-host training wants a single bucket.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import grain
import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.batch import Batch, Sample, stack_examples
from qwen25vl_jax.data.packing import (
    Bucket,
    assemble_example,
    choose_bucket,
    first_fit_decreasing,
    truncate,
)
from qwen25vl_jax.data.records import (
    REASONS,
    RecordError,
    RecordOptions,
    RecordSource,
    record_to_sample,
)

PAD_ID = 151643  # <|endoftext|>


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the training input pipeline needs besides the model config and tokenizer.

    buckets: (seq_len, num_slots) shapes; num_slots a multiple of the ViT window_patches.
    batch_size: packed examples per batch on this host. lookahead: new samples per packing
    window, min_fill / max_carry (default lookahead) / max_age: see `plan_window`. Memory: a
    window holds up to lookahead + max_carry samples, patches included (an image of 1344^2
    pixels is 43 MB of float32 patches); lookahead should be >= ~8 x batch_size.
    oversize: a sample no bucket holds is cut to the longest bucket that holds its media
    ("truncate"; impossible when the cut would split a media) or is a "too_long" bad record
    ("drop"). on_bad_record: "raise" stops at the first bad record (RecordError names it);
    "skip" drops it and counts it by reason. num_epochs None repeats forever (reshuffled per
    epoch). num_workers: preprocessing processes (0 = in this process); worker_buffer_size:
    samples each buffers (default lookahead / num_workers: the workers prepare the next window
    while this one is packed); read_threads and prefetch: threads and buffered elements per
    process.
    """

    paths: tuple[str, ...]
    media_root: str = ""
    buckets: tuple[Bucket, ...] = (Bucket(8192, 32768),)
    batch_size: int = 1
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    num_workers: int = 0
    worker_buffer_size: int | None = None
    read_threads: int = 0
    prefetch: int = 4
    lookahead: int = 32
    min_fill: float = 0.97
    max_carry: int | None = None
    max_age: int = 4
    oversize: Literal["truncate", "drop"] = "truncate"
    on_bad_record: Literal["raise", "skip"] = "raise"
    pad_id: int = PAD_ID
    records: RecordOptions = RecordOptions()
    tokenizer_path: str | None = None

    def __post_init__(self):
        if isinstance(self.paths, (str, os.PathLike)):
            object.__setattr__(self, "paths", (os.fspath(self.paths),))
        if self.oversize not in ("truncate", "drop"):
            raise ValueError(f"oversize must be 'truncate' or 'drop', got {self.oversize!r}")
        if self.on_bad_record not in ("raise", "skip"):
            raise ValueError(f"on_bad_record must be 'raise' or 'skip': {self.on_bad_record!r}")
        if not self.buckets or self.batch_size < 1 or self.lookahead < 1:
            raise ValueError("need at least one bucket, batch_size >= 1 and lookahead >= 1")
        if self.media_root and not self.records.media_root:
            object.__setattr__(
                self, "records", dataclasses.replace(self.records, media_root=self.media_root)
            )


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
            sample = record_to_sample(payload, record_id, cfg=self.cfg, tokenizer=self.tokenizer,
                                      options=c.records)  # fmt: skip
            sample, cut = fit_sample(sample, c.buckets, self.cfg, c.oversize, record_id)
        except RecordError as err:
            if c.on_bad_record == "raise":
                raise
            return {"error": err.reason, "record_id": err.record_id, "detail": err.detail}
        return {"sample": sample, "truncated": cut, "index": index}


def plan_window(
    sizes: Sequence[tuple[int, int]],
    buckets: Sequence[Bucket],
    batch_size: int,
    *,
    min_fill: float,
    max_carry: int,
    forced: Sequence[int] = (),
    final: bool = False,
) -> tuple[list[tuple[int, list[list[int]]]], list[int]]:
    """Packs one window of samples given their (tokens, ViT slots); a pure function.

    Each sample goes to its home bucket (the smallest, by (seq_len, num_slots), that holds it);
    each bucket's samples are packed first-fit-decreasing. Bins filled to at least ``min_fill``
    (of text or of ViT slots, whichever is fuller) are emitted, rounded down to whole batches;
    the rest are carried into the next window to be packed again with new samples (at most
    ``max_carry`` samples; bins holding a ``forced`` sample, and every bin when ``final``, are
    emitted). A batch that cannot be completed gets fewer than batch_size bins.

    Returns (batches, carry): batches = [(bucket index into sorted buckets, bins)], each bin a
    sorted list of sample indices, in order of their first sample; carry = sorted indices.
    """
    buckets = sorted(buckets, key=lambda b: (b.seq_len, b.num_slots))
    home = [buckets.index(choose_bucket(t, s, buckets)) for t, s in sizes]
    forced, batches, carry = set(forced), [], []
    for h, bucket in enumerate(buckets):
        idx = [i for i in range(len(sizes)) if home[i] == h]
        if not idx:
            continue
        ffd = first_fit_decreasing([sizes[i] for i in idx], bucket)
        bins = [[idx[j] for j in b] for b in ffd]

        def fill(b, bucket=bucket):
            t, s = (sum(sizes[i][k] for i in b) for k in (0, 1))
            return max(t / bucket.seq_len, s / max(bucket.num_slots, 1))

        must = [any(i in forced for i in b) for b in bins]
        order = sorted(range(len(bins)), key=lambda k: (not must[k], -fill(bins[k])))
        bins = [bins[k] for k in order]
        full = math.ceil(len(bins) / batch_size) * batch_size
        if final:
            emit = full
        else:
            good = sum(must[k] or fill(bins[j]) >= min_fill for j, k in enumerate(order))
            emit = max(good // batch_size * batch_size,
                       math.ceil(sum(must) / batch_size) * batch_size)  # fmt: skip
            while emit < full and sum(map(len, bins[emit:])) > max_carry - len(carry):
                emit += batch_size
        out = sorted(bins[:emit], key=lambda b: b[0])
        batches += [(h, out[k : k + batch_size]) for k in range(0, len(out), batch_size)]
        carry += [i for b in bins[emit:] for i in b]
    return sorted(batches, key=lambda hb: hb[1][0][0]), sorted(carry)


def empty_example(bucket: Bucket, cfg: ModelConfig, pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
    """A packed example with no sample (segment ids 0, no loss): fills a batch a window cannot."""
    length, n = bucket.seq_len, bucket.num_slots
    return {
        "tokens": np.full(length, pad_id, np.int32),
        "segment_ids": np.zeros(length, np.int32),
        "positions": np.zeros((3, length), np.int32),
        "vision_index": np.full(length, -1, np.int32),
        "patches": np.zeros((n, cfg.vision.patch_dim), np.float32),
        "vit_positions": np.zeros((n, 2), np.int32),
        "vit_segment_ids": np.zeros(n, np.int32),
        "targets": np.zeros(length, np.int32),
        "loss_mask": np.zeros(length, np.float32),
    }


def new_counts() -> dict[str, Any]:
    """Pipeline counters (JSON-able; part of the iterator state)."""
    return {"records": 0, "samples": 0, "truncated": 0, "skipped": dict.fromkeys(REASONS, 0),
            "batches": 0, "examples": 0, "padding_examples": 0, "real_tokens": 0,
            "token_capacity": 0, "real_patches": 0, "patch_capacity": 0}  # fmt: skip


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
                continue
            self._counts["truncated"] += int(element["truncated"])
            samples.append(element["sample"])
            indices.append(element["index"])
            new += 1
        ages = [age for _, age in self._carry] + [0] * new
        batches, carry = plan_window(
            [(s.num_tokens, s.num_slots(d.cfg)) for s in samples], d.buckets, d.batch_size,
            min_fill=d.min_fill, max_carry=d.max_carry, final=final,
            forced=[k for k, a in enumerate(ages) if a >= d.max_age],
        )  # fmt: skip
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
        c["real_patches"] += sum(len(samples[i].patches) for b in bins for i in b)
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
        examples = [
            assemble_example([samples[i] for i in b], bucket, d.cfg, d.pad_id) for b in bins
        ]
        examples += [empty_example(bucket, d.cfg, d.pad_id)] * (d.batch_size - len(bins))
        return stack_examples(examples)

    def get_state(self) -> dict[str, Any]:
        w = self._window
        if w is not None and self._emitted < len(w.batches):
            return {"parent": w.start, "carry": copy.deepcopy(w.carry_in),
                    "emitted": self._emitted, "counts": copy.deepcopy(w.counts)}  # fmt: skip
        # between windows (or restored and not yet re-read: _emitted batches still to skip)
        return {"parent": self._parent.get_state(), "carry": copy.deepcopy(self._carry),
                "emitted": self._emitted if w is None else 0,
                "counts": copy.deepcopy(self._counts)}  # fmt: skip

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
    with index i): a restored iterator recomputes its carried samples from it.
    """

    def __init__(self, parent: grain.IterDataset, lookup: grain.MapDataset, *, cfg: ModelConfig,
                 buckets: Sequence[Bucket], batch_size: int, lookahead: int,
                 min_fill: float = 0.97, max_carry: int | None = None, max_age: int = 4,
                 pad_id: int = PAD_ID):  # fmt: skip
        super().__init__(parent)
        self.lookup, self.cfg, self.buckets, self.pad_id = lookup, cfg, tuple(buckets), pad_id
        self.batch_size, self.lookahead, self.min_fill = batch_size, lookahead, min_fill
        self.max_carry = lookahead if max_carry is None else max_carry
        self.max_age = max_age
        self.buckets_sorted = sorted(self.buckets, key=lambda b: (b.seq_len, b.num_slots))
        for b in self.buckets:
            if b.num_slots % cfg.vision.window_patches:
                raise ValueError(f"{b}: num_slots not a multiple of {cfg.vision.window_patches}")

    def __iter__(self) -> PackIterator:
        return PackIterator(self._parent.__iter__(), self)


def _materialize_lazy_attributes(ds: Any) -> None:
    """Computes every ``functools.cached_property`` of the datasets in ``ds``'s graph now.

    mp_prefetch pickles the shared parent graph for each worker in parallel threads while
    other threads may first touch (and so add to the ``__dict__`` of) the same datasets; the
    pickler then fails with "dictionary changed size during iteration" (Grain 0.2.18).
    """
    todo, seen = [ds], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for klass in type(node).__mro__:
            for name, attr in vars(klass).items():
                if isinstance(attr, functools.cached_property):
                    getattr(node, name, None)
        todo += list(getattr(node, "_parents", ()))


def build_dataset(
    config: PipelineConfig,
    cfg: ModelConfig,
    tokenizer: Any,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PackIterDataset:
    """The pipeline as a Grain IterDataset; shard = (process_index, process_count), by default
    this JAX process's (``jax.process_index()``, ``jax.process_count()``)."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    ds = grain.MapDataset.source(RecordSource(config.paths))
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    if config.num_epochs != 1:
        ds = ds.repeat(config.num_epochs)  # reshuffles every epoch
    ds = ds[process_index::process_count]  # disjoint shards that cover every (epoch, record)
    ds = ds.map_with_index(Preprocess(cfg, tokenizer, config))
    it = ds.to_iter_dataset(grain.ReadOptions(config.read_threads, config.prefetch))
    if config.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's worker start-up reads absl flags
            flags.FLAGS.mark_as_parsed()
        _materialize_lazy_attributes(it)
        buffer = config.worker_buffer_size or max(2, -(-config.lookahead // config.num_workers))
        opts = grain.MultiprocessingOptions(config.num_workers, buffer)
        it = it.mp_prefetch(opts)
    return PackIterDataset(it, ds, cfg=cfg, buckets=config.buckets, batch_size=config.batch_size,
                           lookahead=config.lookahead, min_fill=config.min_fill,
                           max_carry=config.max_carry, max_age=config.max_age,
                           pad_id=config.pad_id)  # fmt: skip


def make_train_iterator(
    config: PipelineConfig,
    cfg: ModelConfig,
    *,
    tokenizer: Any = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PackIterator:
    """A Grain iterator of `Batch`es for this host; ``.counts`` reports the counters, state is
    saved / restored with `save_iterator_state` / `restore_iterator_state` (or grain's
    ``CheckpointSave`` / ``CheckpointRestore`` inside an Orbax ``Composite``). Close it (``del``
    or ``.close()`` where available) to stop worker processes. The tokenizer defaults to
    ``config.tokenizer_path``, else the offline Qwen2.5 tokenizer."""
    if tokenizer is None:
        from qwen25vl_jax.data.tokenizer import build_qwen_tokenizer, load_tokenizer

        path = config.tokenizer_path
        tokenizer = load_tokenizer(path) if path else build_qwen_tokenizer()
    ds = build_dataset(config, cfg, tokenizer, process_index=process_index,
                       process_count=process_count)  # fmt: skip
    return iter(ds)


def efficiency(counts: dict[str, Any]) -> dict[str, float]:
    """Packing efficiency: real tokens / token capacity and real patches / patch capacity."""
    return {
        "text": counts["real_tokens"] / max(counts["token_capacity"], 1),
        "patches": counts["real_patches"] / max(counts["patch_capacity"], 1),
    }


def save_iterator_state(directory: str | os.PathLike, iterator: grain.DatasetIterator) -> None:
    """Saves the iterator state with Orbax into ``directory`` (must not exist): one JSON file
    per JAX process, via Grain's Orbax handler."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckptr:
        ckptr.save(os.path.abspath(directory), args=grain.checkpoint.CheckpointSave(iterator))


def restore_iterator_state(
    directory: str | os.PathLike, iterator: grain.DatasetIterator
) -> grain.DatasetIterator:
    """Restores a state saved by `save_iterator_state` into ``iterator`` (built with the same
    config) and returns it; it then yields what the saved one would have."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckptr:
        return ckptr.restore(
            os.path.abspath(directory), args=grain.checkpoint.CheckpointRestore(iterator)
        )
