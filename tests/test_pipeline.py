"""The Grain pipeline: exact resume through Orbax, disjoint covering shards, bad-record policy,
oversize truncate / drop, packing windows with carry-over, parallel workers."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen25vl_jax.data.iterator_state import restore_iterator_state, save_iterator_state
from qwen25vl_jax.data.media import Media
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.pipeline import PipelineConfig, make_train_iterator
from qwen25vl_jax.data.pipeline_counts import efficiency
from qwen25vl_jax.data.record_sources import RecordSource
from qwen25vl_jax.data.records import RecordError, record_to_sample
from qwen25vl_jax.data.sample import Sample, sample_from_tree, sample_to_tree
from qwen25vl_jax.data.window_plan import plan_window
from tests.test_records import CFG, OPTS, cached_tokenizer, write_image, write_jsonl

N = 36
BUCKET = Bucket(256, 256)


@pytest.fixture(scope="module")
def tok(request):
    return cached_tokenizer(request)


def make_record(i: int, rng) -> dict:
    """Record i: 0-2 small images, a question, and a reply "answer i" plus filler words."""
    n_img = int(rng.integers(0, 3))
    images = [f"img{int(rng.integers(4))}.png" for _ in range(n_img)]
    question = "<image>" * n_img + "question " * int(rng.integers(1, 20))
    reply = f"answer {i} " + "word " * int(rng.integers(1, 150))
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": reply}], "images": images}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for k in range(4):
        write_image(root / f"img{k}.png", int(rng.integers(40, 130)), int(rng.integers(40, 130)), k)
    records = [make_record(i, rng) for i in range(N)]
    return write_jsonl(root / "train.jsonl", records), root, records


def config(corpus, **kw) -> PipelineConfig:
    path, root, _ = corpus
    base = dict(paths=(str(path),), media_root=str(root), buckets=(BUCKET,), batch_size=2,
                lookahead=6, records=OPTS)  # fmt: skip
    return PipelineConfig(**{**base, **kw})


def segments(batch):
    """(row, mask) of every packed sample in a batch."""
    for row in range(batch.tokens.shape[0]):
        seg = batch.segment_ids[row]
        for k in range(1, seg.max() + 1):
            yield row, seg == k


def marker(tokens, tok) -> int:
    """The record number i of a sample's tokens (its reply starts with "answer i")."""
    (found,) = re.findall(r"answer (\d+)", tok.decode(tokens.tolist(), skip_special_tokens=False))
    return int(found)


def markers(batch, tok) -> list[int]:
    return [marker(batch.tokens[row][mask], tok) for row, mask in segments(batch)]


def assert_batches_equal(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in dataclasses.fields(x):
            np.testing.assert_array_equal(getattr(x, f.name), getattr(y, f.name), err_msg=f.name)


def run(conf, tok, **kw):
    it = make_train_iterator(conf, CFG, tokenizer=tok, process_index=0, process_count=1, **kw)
    return list(it), it


def test_batches_hold_each_record_once_with_its_own_tokens(corpus, tok):
    """Two buckets: every record lands exactly once, in a batch of one bucket's shape, with the
    very tokens and per-sample positions record_to_sample gives; counters match the batches."""
    small, large = Bucket(160, 128), Bucket(384, 256)
    conf = config(corpus, buckets=(large, small))
    batches, it = run(conf, tok)
    records = corpus[2]
    seen = [m for b in batches for m in markers(b, tok)]
    assert sorted(seen) == list(range(N))
    shapes = {(b.tokens.shape[1], b.patches.shape[1]) for b in batches}
    assert shapes == {(160, 128), (384, 256)}
    for b in batches:
        assert b.tokens.shape[0] == 2 and b.positions.shape == (3, *b.tokens.shape)
        for row, mask in segments(b):
            i = marker(b.tokens[row][mask], tok)
            s = record_to_sample(records[i], "x", cfg=CFG, tokenizer=tok, options=conf.records)
            np.testing.assert_array_equal(b.tokens[row][mask], s.input_ids)
            np.testing.assert_array_equal(b.positions[:, row][:, mask], s.positions)
            home = small if small.fits(s.num_tokens, s.num_slots(CFG)) else large
            assert b.tokens.shape[1] == home.seq_len
    c = it.counts
    assert c["records"] == c["samples"] == N and c["batches"] == len(batches)
    assert c["real_tokens"] == sum(int((b.segment_ids > 0).sum()) for b in batches)
    assert c["token_capacity"] == sum(b.tokens.size for b in batches)
    assert c["real_patches"] == sum(int((b.vit_segment_ids > 0).sum()) for b in batches)
    assert 0 < efficiency(c)["text"] <= 1


def test_resume_through_orbax_equals_uninterrupted(corpus, tok, tmp_path):
    """Stop after k batches (mid-window, with samples carried over, across an epoch boundary),
    save with Orbax, restore into a fresh iterator: the remaining batches and the final
    counters are exactly those of the uninterrupted run."""
    conf = config(corpus, num_epochs=2, seed=7)
    full, it = run(conf, tok)
    states, probe = [], make_train_iterator(conf, CFG, tokenizer=tok, process_index=0,
                                            process_count=1)  # fmt: skip
    for _ in full:
        next(probe)
        states.append(probe.get_state())
    json.dumps(states)  # small and JSON-able
    mid = [k for k, s in enumerate(states) if s["emitted"] > 0 and s["carry"]]
    fresh = [k for k, s in enumerate(states) if s["emitted"] == 0 and s["carry"]]
    assert mid and fresh, "the corpus should exercise windows with carried samples"
    for k in (mid[0] + 1, fresh[-1] + 1, len(full) // 2):
        first = make_train_iterator(conf, CFG, tokenizer=tok, process_index=0, process_count=1)
        for _ in range(k):
            next(first)
        save_iterator_state(tmp_path / f"ckpt{k}", first)
        second = make_train_iterator(conf, CFG, tokenizer=tok, process_index=0, process_count=1)
        restore_iterator_state(tmp_path / f"ckpt{k}", second)
        assert_batches_equal(list(second), full[k:])
        assert second.counts == it.counts


def test_parallel_workers_same_batches_and_resume(corpus, tok, tmp_path):
    """Two preprocessing processes give the batches of the in-process pipeline, and their
    iterator state restores exactly too."""
    conf = config(corpus, num_epochs=2)
    reference, _ = run(conf, tok)
    par = dataclasses.replace(conf, num_workers=2)
    first = make_train_iterator(par, CFG, tokenizer=tok, process_index=0, process_count=1)
    k = len(reference) // 2 + 1
    head = [next(first) for _ in range(k)]
    save_iterator_state(tmp_path / "ckpt", first)
    assert_batches_equal(head + list(first), reference)
    second = make_train_iterator(par, CFG, tokenizer=tok, process_index=0, process_count=1)
    restore_iterator_state(tmp_path / "ckpt", second)
    assert_batches_equal(list(second), reference[k:])


def test_sample_cache_serves_later_epochs_with_the_same_batches(corpus, tok, monkeypatch):
    """With sample_cache_mb each record is preprocessed once over three epochs and the batches
    are those of the uncached pipeline (in-process and with 2 workers); a budget of 4 samples
    caches 4; a cached sample cannot be written into."""
    from qwen25vl_jax.data import preprocess

    conf = config(corpus, num_epochs=3)
    reference, _ = run(conf, tok)
    calls = []

    def counted(*a, **kw):
        calls.append(1)
        return record_to_sample(*a, **kw)

    monkeypatch.setattr(preprocess, "record_to_sample", counted)
    cached, _ = run(dataclasses.replace(conf, sample_cache_mb=64), tok)
    assert_batches_equal(cached, reference)
    assert len(calls) == N
    prep = preprocess.Preprocess(CFG, tok, dataclasses.replace(conf, sample_cache_mb=64))
    raw = RecordSource(conf.paths)[0]
    first = prep(0, raw)["sample"]
    assert prep(N, raw)["sample"] is first
    with pytest.raises(ValueError, match="read-only"):
        first.input_ids[0] = 1
    calls.clear()
    monkeypatch.setattr(preprocess, "sample_nbytes", lambda sample: 2**18)
    cached, _ = run(dataclasses.replace(conf, sample_cache_mb=1), tok)
    assert_batches_equal(cached, reference)
    assert len(calls) == 3 * N - 2 * 4
    monkeypatch.undo()
    par = dataclasses.replace(conf, sample_cache_mb=64, num_workers=2)
    assert_batches_equal(run(par, tok)[0], reference)


def test_workers_stop_at_once_with_their_queue_full(corpus, tok):
    """A worker whose output queue is full when training ends exits at close(), rather than
    after Grain's 25 s kill timeout: samples reach the main process through shared memory, not
    pickled into a pipe that nobody reads any more; they arrive whole and the same."""
    conf = config(corpus, num_epochs=None, sample_cache_mb=64, lookahead=32)
    here, it = (
        make_train_iterator(c, CFG, tokenizer=tok, process_index=0, process_count=1)
        for c in (conf, dataclasses.replace(conf, num_workers=1))
    )
    k = N  # two epochs' worth and more: the later ones from the cache
    assert_batches_equal([next(it) for _ in range(k)], [next(here) for _ in range(k)])
    time.sleep(3)  # the worker fills its queue from the cache
    start = time.perf_counter()
    it.close()
    assert time.perf_counter() - start < 10


def test_sample_survives_its_tree_form():
    media = [Media("image", np.ones((16, 12), np.float32), (1, 4, 4), None, (30, 40)),
             Media("video", np.zeros((32, 12), np.float32), (2, 4, 4), 0.5)]  # fmt: skip
    sample = Sample(np.arange(5), np.ones(5, bool), np.zeros((3, 5), np.int32), tuple(media))
    tree = sample_to_tree(sample)
    leaves = jax.tree.leaves(tree)
    assert any(leaf is media[0].patches for leaf in leaves)  # an array leaf, not in a pickle
    back = sample_from_tree(tree)
    assert back.media[1].second_per_grid_t == 0.5 and back.media[0].original_hw == (30, 40)
    for a, b in zip(jax.tree.leaves(sample_to_tree(back)), leaves):
        np.testing.assert_array_equal(a, b)


def test_two_processes_read_disjoint_shards_covering_the_data(corpus, tok):
    """process_index 0 and 1 of 2: no record in both, together all of them; over two epochs
    each (epoch, record) is read by exactly one process."""
    for epochs in (1, 2):
        seen = []
        for p in (0, 1):
            conf = config(corpus, num_epochs=epochs)
            it = make_train_iterator(conf, CFG, tokenizer=tok, process_index=p, process_count=2)
            seen.append([m for b in it for m in markers(b, tok)])
        assert len(seen[0]) >= N // 2 * epochs - 1 and len(seen[1]) >= N // 2 * epochs - 1
        assert sorted(seen[0] + seen[1]) == sorted(list(range(N)) * epochs)
        if epochs == 1:
            assert not set(seen[0]) & set(seen[1])


def bad_corpus(corpus, tmp_path):
    _, root, records = corpus
    long_text = {"messages": [{"role": "user", "content": "<image>x"},
                              {"role": "assistant", "content": "answer 900 " + "w " * 400}],
                 "images": ["img0.png"]}  # fmt: skip
    bad = [
        "{oops",
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
        {"messages": records[0]["messages"], "images": ["img0.png", "img1.png", "img2.png"]},
        {
            "messages": [
                {"role": "user", "content": "<image>q"},
                {"role": "assistant", "content": "answer 901"},
            ],
            "images": ["gone.png"],
        },
        long_text,
    ]
    good = records[:10]
    rows = [good[0], good[1], bad[0], good[2], bad[1], bad[2], good[3], bad[3], bad[4], good[4]]
    rows += [bad[5]] + good[5:]
    (root / "broken.png").write_bytes(b"\x89PNG garbage")
    rows.append({"messages": [{"role": "user", "content": "<image>q"},
                              {"role": "assistant", "content": "answer 902"}],
                 "images": ["broken.png"]})  # fmt: skip
    return write_jsonl(tmp_path / "bad.jsonl", rows), list(range(10))


def test_bad_records_fail_fast_or_skip_and_count(corpus, tok, tmp_path):
    path, good = bad_corpus(corpus, tmp_path)
    conf = config(corpus, paths=(str(path),), shuffle=False, oversize="drop")
    with pytest.raises(RecordError, match=rf"record {re.escape(str(path))}:3: malformed: "):
        run(conf, tok)
    batches, it = run(dataclasses.replace(conf, on_bad_record="skip"), tok)
    assert sorted(m for b in batches for m in markers(b, tok)) == good
    c = it.counts
    assert c["skipped"] == {"malformed": 1, "unknown_role": 1, "empty_reply": 1,
                            "placeholder_mismatch": 1, "missing_media": 1, "corrupt_media": 1,
                            "too_long": 1}  # fmt: skip
    assert (c["records"], c["samples"], c["truncated"]) == (17, 10, 0)


def test_oversize_truncated_or_dropped(corpus, tok, tmp_path):
    """A reply longer than L is cut to L (counted); with "drop", or when the cut would split
    an image, it is a too_long record (skipped and counted, or raised)."""
    _, root, records = corpus
    text_long = {"messages": [{"role": "user", "content": "<image>q"},
                              {"role": "assistant", "content": "answer 900 " + "w " * 400}],
                 "images": ["img0.png"]}  # fmt: skip
    image_late = {"messages": [{"role": "user", "content": "q " * 400 + "<image>"},
                               {"role": "assistant", "content": "answer 901"}],
                  "images": ["img0.png"]}  # fmt: skip
    path = write_jsonl(tmp_path / "long.jsonl", records[:5] + [text_long, image_late])
    conf = config(corpus, paths=(str(path),), on_bad_record="skip")
    batches, it = run(conf, tok)
    assert sorted(m for b in batches for m in markers(b, tok)) == [0, 1, 2, 3, 4, 900]
    assert it.counts["truncated"] == 1 and it.counts["skipped"]["too_long"] == 1
    lengths = [int((b.segment_ids[r] == k).sum()) for b in batches for r in range(2)
               for k in range(1, b.segment_ids[r].max() + 1)]  # fmt: skip
    assert max(lengths) == BUCKET.seq_len
    batches, it = run(dataclasses.replace(conf, oversize="drop"), tok)
    assert sorted(m for b in batches for m in markers(b, tok)) == [0, 1, 2, 3, 4]
    assert it.counts["truncated"] == 0 and it.counts["skipped"]["too_long"] == 2
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:6: too_long: "):
        run(dataclasses.replace(conf, oversize="drop", on_bad_record="raise", shuffle=False), tok)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 4), st.booleans())
def test_plan_window_invariants(seed, n, batch_size, final):
    """Each sample is emitted once or carried, in a bin of its home bucket that fits it;
    batches hold at most batch_size bins; forced samples are never carried, nothing is carried
    when final, at most max_carry otherwise. Without a carry limit or forced samples, every
    emitted bin is filled to min_fill and every batch is complete."""
    rng = np.random.default_rng(seed)
    buckets = [Bucket(100, 64), Bucket(300, 128)]
    sizes = [(int(rng.integers(1, 300)), int(rng.integers(0, 5)) * 16) for _ in range(n)]
    sizes = [(t, s) for t, s in sizes if any(b.fits(t, s) for b in buckets)] or [(5, 0)]
    home = [next(k for k, b in enumerate(buckets) if b.fits(*size)) for size in sizes]
    forced = [i for i in range(len(sizes)) if rng.random() < 0.1]

    def fill(h, b):
        return max(sum(sizes[i][k] for i in b) / (buckets[h].seq_len, buckets[h].num_slots)[k]
                   for k in (0, 1))  # fmt: skip

    batches, carry = plan_window(sizes, buckets, batch_size, min_fill=0.9, max_carry=6,
                                 forced=forced, final=final)  # fmt: skip
    emitted = [i for _, bins in batches for b in bins for i in b]
    assert sorted(emitted + carry) == list(range(len(sizes)))
    assert not set(carry) & set(forced) and len(carry) <= (0 if final else 6)
    for h, bins in batches:
        assert 1 <= len(bins) <= batch_size
        for b in bins:
            assert buckets[h].fits(*np.sum([sizes[i] for i in b], axis=0))
            assert {home[i] for i in b} == {h}
    if not final:
        batches, carry = plan_window(sizes, buckets, batch_size, min_fill=0.9,
                                     max_carry=len(sizes))  # fmt: skip
        assert all(len(bins) == batch_size for _, bins in batches)
        assert all(fill(h, b) >= 0.9 for h, bins in batches for b in bins)
