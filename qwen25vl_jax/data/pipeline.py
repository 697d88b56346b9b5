"""The Grain input pipeline: records -> shuffle -> shard -> preprocess (workers) -> pack -> Batch.

    RecordSource (JSONL / ArrayRecord) ─► MapDataset.shuffle(seed) ─► repeat(epochs)
      ─► slice(process_index::process_count)     each JAX process reads a disjoint shard
      ─► map(Preprocess)                         record -> Sample, in mp_prefetch workers
      ─► PackIterDataset                         look-ahead windows -> packed `Batch`es

Files: `record_sources.py` (the Grain source), `preprocess.py` (the worker map),
`window_plan.py` (which samples share a bin), `pack_iterator.py` (windows -> batches, the
iterator state), `pipeline_counts.py` (counters), `iterator_state.py` (Orbax save / restore).

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

Bad records: with ``on_bad_record="skip"`` they are counted by reason (``counts["skipped"]``);
``max_consecutive_bad`` of them in a row stop the iterator with `TooManyBadRecords` naming the
last one, so a corpus whose every record is bad fails instead of looping forever. With
``"raise"`` the first bad record raises `RecordError`, from worker processes too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Literal

import grain

from qwen25vl_jax.cli_errors import InputError
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.pack_iterator import PackIterator, PackIterDataset
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.preprocess import Preprocess
from qwen25vl_jax.data.record_sources import RecordSource
from qwen25vl_jax.data.records import RecordOptions
from qwen25vl_jax.data.sample import sample_from_tree, sample_to_tree


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the training input pipeline needs besides the model config and tokenizer.

    buckets: (seq_len, num_slots) shapes; num_slots a multiple of the ViT window_patches.
    batch_size: packed examples per batch on this host. lookahead: new samples per packing
    window, min_fill / max_carry (default lookahead) / max_age: see `plan_window`; balance:
    rows of even compute cost over the data-parallel shards (`data/row_balance.py`). Memory: a
    window holds up to lookahead + max_carry samples, patches included (an image of 1344^2
    pixels is 43 MB of float32 patches); lookahead should be >= ~8 x batch_size.
    oversize: a sample no bucket holds is cut to the longest bucket that holds its media
    ("truncate"; impossible when the cut would split a media) or is a "too_long" bad record
    ("drop"). on_bad_record: "raise" stops at the first bad record (RecordError names it);
    "skip" drops it and counts it by reason. num_epochs None repeats forever (reshuffled per
    epoch). num_workers: preprocessing processes (0 = in this process); worker_buffer_size:
    samples each buffers (default lookahead / num_workers: the workers prepare the next window
    while this one is packed); read_threads and prefetch: threads and buffered elements per
    process. sample_cache_mb: MiB of preprocessed samples each preprocessing process keeps to
    serve later epochs without decoding again (0 = none; see `Preprocess`).
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
    sample_cache_mb: int = 0
    lookahead: int = 32
    min_fill: float = 0.97
    max_carry: int | None = None
    max_age: int = 4
    balance: bool = True
    oversize: Literal["truncate", "drop"] = "truncate"
    on_bad_record: Literal["raise", "skip"] = "raise"
    max_consecutive_bad: int = 1000
    pad_id: int | None = None  # None: the model's <|endoftext|> (ModelConfig.bos_token_id)
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


def preprocessed_stream(
    config: PipelineConfig,
    preprocess: Any,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[grain.IterDataset, grain.MapDataset]:
    """Records shuffled, repeated, sharded and mapped by `preprocess` (in worker processes when
    configured): (the stream to iterate, the MapDataset it iterates, for lookups by index).
    Shard = (process_index, process_count), by default this JAX process's. Every packer (SFT
    samples, DPO pairs) reads from here."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    source = RecordSource(config.paths)
    if not len(source):  # repeating nothing would never yield
        raise InputError(f"{', '.join(config.paths)}: no records")
    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    if config.num_epochs != 1:
        ds = ds.repeat(config.num_epochs)  # reshuffles every epoch
    ds = ds[process_index::process_count]  # disjoint shards that cover every (epoch, record)
    ds = ds.map_with_index(preprocess)
    it = ds.to_iter_dataset(grain.ReadOptions(config.read_threads, config.prefetch))
    if config.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's worker start-up reads absl flags
            flags.FLAGS.mark_as_parsed()
        _materialize_lazy_attributes(it)
        buffer = config.worker_buffer_size or max(2, -(-config.lookahead // config.num_workers))
        opts = grain.MultiprocessingOptions(config.num_workers, buffer)
        # samples cross the process boundary as trees of arrays: through shared memory
        to_tree, from_tree = (
            functools.partial(_convert_sample, f) for f in (sample_to_tree, sample_from_tree)
        )
        it = it.map(to_tree).mp_prefetch(opts).map(from_tree)
    return it, ds


def _convert_sample(convert, element: dict) -> dict:
    """A preprocessed element with its sample converted (an error element as it is)."""
    return {**element, "sample": convert(element["sample"])} if "sample" in element else element


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
    it, ds = preprocessed_stream(
        config,
        Preprocess(cfg, tokenizer, config),
        process_index=process_index,
        process_count=process_count,
    )
    return PackIterDataset(
        it,
        ds,
        cfg=cfg,
        buckets=config.buckets,
        batch_size=config.batch_size,
        lookahead=config.lookahead,
        min_fill=config.min_fill,
        max_carry=config.max_carry,
        max_age=config.max_age,
        pad_id=config.pad_id,
        max_consecutive_bad=config.max_consecutive_bad,
        balance=config.balance,
    )


def pipeline_tokenizer(config: PipelineConfig) -> Any:
    """``config.tokenizer_path``'s tokenizer, else the offline Qwen2.5 tokenizer."""
    from qwen25vl_jax.data.tokenizer import build_qwen_tokenizer, load_tokenizer

    path = config.tokenizer_path
    return load_tokenizer(path) if path else build_qwen_tokenizer()


def check_vocabulary(tokenizer: Any, cfg: ModelConfig, name: str) -> None:
    """`InputError` when the tokenizer can produce ids the model has no embedding for (they
    would train silently on clamped rows)."""
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > cfg.text.vocab_size:
        raise InputError(
            f"tokenizer {name}: {n} tokens, over the model's vocabulary of {cfg.text.vocab_size}"
        )


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
    tokenizer = pipeline_tokenizer(config) if tokenizer is None else tokenizer
    ds = build_dataset(
        config, cfg, tokenizer, process_index=process_index, process_count=process_count
    )
    return iter(ds)
