"""Preference records -> pairs (every format; the chosen reply is exactly the SFT sample of the
same conversation; only replies supervised; bad records named) and the resumable, sharded
pipeline of `PreferenceBatch`es."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.pipeline import PipelineConfig
from qwen25vl_jax.data.preference import record_to_pair
from qwen25vl_jax.data.preference_pipeline import make_preference_iterator
from qwen25vl_jax.data.records import RecordError, RecordOptions, record_to_sample
from tests.preference_cases import records, tokenizer_and_config, write_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefs")
    path = write_data(d, copies=3)
    tok, cfg = tokenizer_and_config()
    return d, path, tok, cfg, RecordOptions(media_root=str(d))


def as_sft(record: dict, reply) -> dict:
    """The SFT record of the same conversation with `reply` as the answer."""
    prompt = record.get("messages", record.get("conversations", record.get("prompt")))
    reply = reply if isinstance(reply, list) else [reply]
    reply = [{"role": "assistant", "content": r} if isinstance(r, str) else r for r in reply]
    rest = {k: v for k, v in record.items()
            if k not in ("messages", "conversations", "prompt", "chosen", "rejected")}  # fmt: skip
    return {**rest, "messages": prompt + reply}


def test_every_format_gives_the_sft_samples_with_replies_supervised(setup):
    d, _, tok, cfg, options = setup
    for i, record in enumerate(records()):
        pair = record_to_pair(json.dumps(record), f"r:{i}", cfg=cfg, tokenizer=tok,
                              options=options)  # fmt: skip
        assert all(a is b for a, b in zip(pair.chosen.media, pair.rejected.media, strict=True))
        for side, sample in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            sft = record_to_sample(json.dumps(as_sft(record, record[side])), "s", cfg=cfg,
                                   tokenizer=tok, options=options)  # fmt: skip
            np.testing.assert_array_equal(sample.input_ids, sft.input_ids)
            np.testing.assert_array_equal(sample.positions, sft.positions)
            # supervised: the SFT mask on the final reply only (not the prompt's assistant turn)
            assert sample.loss_mask.sum() > 0
            assert not (sample.loss_mask & ~sft.loss_mask).any()
            text = tok.decode(sample.input_ids[sample.loss_mask].tolist(),
                              skip_special_tokens=True)  # fmt: skip
            want = record[side] if isinstance(record[side], str) else None
            if want is not None and "bbox" not in want:
                assert text.strip() == want, (i, side, text)
        if i == 3:  # the prompt's "Red." reply is context in both
            assert pair.chosen.loss_mask.sum() < record_to_sample(
                json.dumps(as_sft(record, record["chosen"])), "s", cfg=cfg, tokenizer=tok,
                options=options).loss_mask.sum()  # fmt: skip
    # grounding rescaled to the resized image, as in SFT (100 x 60 -> 112 x 56)
    pair = record_to_pair(json.dumps(records()[0]), "g", cfg=cfg, tokenizer=tok, options=options)
    text = tok.decode(pair.chosen.input_ids.tolist())
    assert '"bbox_2d": [11, 19, 56, 37]' in text, text


@pytest.mark.parametrize(
    "record, reason, detail",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "chosen": "a"}, "malformed", "rejected"),
        ({"chosen": "a", "rejected": "b"}, "malformed", "messages"),
        ({"messages": "hi", "chosen": "a", "rejected": "b"}, "malformed", "non-empty list"),
        ({"messages": [{"role": "user", "content": "<image>x"}], "images": ["gone.png"],
          "chosen": "a", "rejected": "b"}, "missing_media", "gone.png"),
        ({"messages": [{"role": "user", "content": "x"}], "images": ["a.png"],
          "chosen": "a", "rejected": "b"}, "placeholder_mismatch", "0 <image>"),
        ({"messages": [{"role": "user", "content": "x"}], "chosen": "a", "rejected": "  "},
         "empty_reply", "empty"),
        ({"messages": [{"role": "user", "content": "x"}], "chosen": 3, "rejected": "b"},
         "malformed", "'chosen'"),
    ],
)  # fmt: skip
def test_bad_records_are_named(setup, record, reason, detail):
    *_, tok, cfg, options = setup
    with pytest.raises(RecordError) as err:
        record_to_pair(json.dumps(record), "f.jsonl:7", cfg=cfg, tokenizer=tok, options=options)
    assert err.value.reason == reason and detail in str(err.value)
    assert str(err.value).startswith("record f.jsonl:7") and "\n" not in str(err.value)


def pipe(setup, **kw) -> PipelineConfig:
    d, path, *_ = setup
    kw = {"buckets": (Bucket(384, 64),), "batch_size": 2, "num_epochs": None, **kw}
    return PipelineConfig(paths=(path,), media_root=str(d), **kw)


def test_pipeline_packs_pairs_and_resumes_exactly(setup):
    *_, tok, cfg, _ = setup
    it = make_preference_iterator(pipe(setup), cfg, tok, pairs_per_row=2)
    first = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it) for _ in range(3)]
    again = make_preference_iterator(pipe(setup), cfg, tok, pairs_per_row=2)
    again.set_state(state)
    for want in rest:
        got = next(again)
        for f in ("tokens", "loss_mask", "pair_segments", "patches", "vision_index"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f))
    b = first[0]
    assert b.pair_segments.shape == (2, 2, 2) and b.ref_logps.shape == (2, 2, 2)
    valid = b.pair_segments[..., 0] > 0
    assert valid[:, 0].all() and (b.pair_segments[valid] > 0).all()
    assert it.counts["samples"] == 2 * it.counts["records"] > 0
    # a row never holds more than its pairs; each pair's two segments are in the row
    for batch in first + rest:
        for r in range(2):
            for c, rj in batch.pair_segments[r][batch.pair_segments[r, :, 0] > 0]:
                assert (batch.segment_ids[r] == c).any() and (batch.segment_ids[r] == rj).any()


def test_pipeline_shards_hosts_and_skips_bad_records(setup, tmp_path):
    *_, tok, cfg, _ = setup
    one = make_preference_iterator(pipe(setup, num_epochs=1, shuffle=False), cfg, tok,
                                   pairs_per_row=2, process_index=0, process_count=2)  # fmt: skip
    two = make_preference_iterator(pipe(setup, num_epochs=1, shuffle=False), cfg, tok,
                                   pairs_per_row=2, process_index=1, process_count=2)  # fmt: skip
    for it in (one, two):
        list(it)
    assert one.counts["records"] + two.counts["records"] == 12  # disjoint halves of 12
    assert one.counts["records"] == two.counts["records"] == 6
    bad = tmp_path / "bad.jsonl"
    good = records()[1]
    bad.write_text(json.dumps({"messages": "x", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps(good) + "\n")  # fmt: skip
    d = setup[0]
    cfg_pipe = PipelineConfig(paths=(str(bad),), media_root=str(d), buckets=(Bucket(384, 64),),
                              batch_size=1, shuffle=False, on_bad_record="skip")  # fmt: skip
    it = make_preference_iterator(cfg_pipe, cfg, tok, pairs_per_row=1)
    assert len(list(it)) == 1 and it.counts["skipped"]["malformed"] == 1


def test_self_sampled_pairs_round_trip_through_the_preference_reader(setup, tmp_path):
    """experiments/dpo_self_pairs: a sampled answer's box (resized pixels) is written in original
    pixels and reads back, through record_to_pair, as the box the model wrote; rewards order
    unreadable < wrong < right."""
    from experiments.dpo_self_pairs import UNREADABLE, pair_record, reward
    from experiments.eval_examples import load_examples

    d, _, tok, cfg, options = setup  # a.png is 100 x 60: resized to 112 x 56
    truth = '{"bbox_2d": [10, 20, 50, 40]}'
    sft = {"task": "grounding", "images": ["a.png"],
           "messages": [{"role": "user", "content": "<image>Where is it?"},
                        {"role": "assistant", "content": truth}]}  # fmt: skip
    (tmp_path / "q.jsonl").write_text(json.dumps(sft) + "\n")
    (e,) = load_examples(str(tmp_path / "q.jsonl"), options, factor=28)
    said = '{"bbox_2d": [11, 19, 56, 37]}'
    record = pair_record(e, {"answer": said, "resized_hw": (56, 112)},
                         {"answer": "no idea", "resized_hw": (56, 112)})  # fmt: skip
    assert record["chosen"] == truth and record["rejected"] == "no idea"
    pair = record_to_pair(json.dumps(record), "p", cfg=cfg, tokenizer=tok, options=options)
    assert said in tok.decode(pair.chosen.input_ids.tolist())
    bad = pair_record(e, {"answer": '{"bbox_2d": [1, x]}', "resized_hw": (56, 112)},
                      {"answer": "no", "resized_hw": (56, 112)})  # fmt: skip
    assert bad is None
    assert pair_record(e, {"answer": said, "resized_hw": (56, 112)},
                       {"answer": " ", "resized_hw": (56, 112)}) is None  # fmt: skip
    assert reward("grounding", None, (0, 0, 1, 1)) == UNREADABLE < 0
    assert reward("counting", 2, 3) == 0 < reward("counting", 3, 3) == 1
    assert reward("grounding", (0, 0, 2, 2), (0, 0, 2, 1)) == 0.5
