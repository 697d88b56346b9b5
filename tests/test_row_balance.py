"""Balanced packed rows (data/row_balance.py): even compute cost over data-parallel shards,
budgets never broken, the same samples emitted and carried as unbalanced packing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.layout import layout_slots
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.row_balance import balance_rows, sample_flops, shard_imbalance
from qwen25vl_jax.data.window_plan import plan_window
from qwen25vl_jax.model.cost import forward_flops


def _skewed_mix(cfg):
    """Big images, short videos, long and short texts, in sizes that fill 8 rows of (4096
    tokens, 16384 slots): packing by fill puts the images together and the texts together."""
    kinds = [(40, [(1, 56, 64)])] * 10 + [(60, [(4, 16, 16)])] * 6
    kinds += [(1500, [])] * 8 + [(300, [])] * 22
    sizes, costs = [], []
    for text, grids in kinds:
        tokens = text + sum(t * h * w // cfg.vision.merge_unit for t, h, w in grids)
        sizes.append((tokens, layout_slots(grids, cfg.vision)))
        costs.append(sample_flops(cfg, tokens, grids))
    return sizes, costs


def test_sample_flops_is_forward_flops_of_its_counts():
    """A sample's cost is the analytic count of its own patches, frames and tokens."""
    cfg = ModelConfig.qwen25vl_7b()
    want = forward_flops(cfg, patches=4 * 256 + 100, frames_sq=4 * 256**2 + 100**2,
                         tokens=333, samples_sq=333**2)  # fmt: skip
    assert sample_flops(cfg, 333, [(4, 16, 16), (1, 10, 10)]) == pytest.approx(sum(want.values()))
    # window blocks are linear in patches, full blocks quadratic per frame, not per video
    assert sample_flops(cfg, 0, [(4, 16, 16)]) < sample_flops(cfg, 0, [(1, 32, 32)])


def test_balanced_plan_evens_shard_cost_on_a_skewed_mix():
    cfg = ModelConfig.qwen25vl_7b()
    sizes, costs = _skewed_mix(cfg)
    bucket = Bucket(4096, 16384)
    ratio = {}
    for name, c in (("packed", None), ("balanced", costs)):
        batches, carry = plan_window(sizes, [bucket], 8, min_fill=0.5, max_carry=0, final=True,
                                     costs=c)  # fmt: skip
        assert not carry and len(batches) == 1 and len(batches[0][1]) == 8
        bins = batches[0][1]
        assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
        assert all(bucket.fits(*np.sum([sizes[i] for i in b], axis=0)) for b in bins)
        most, mean = shard_imbalance([sum(costs[i] for i in b) for b in bins], 8)
        ratio[name] = most / mean
    print(f"max/mean shard cost over 8 shards: packed {ratio['packed']:.3f}, "
          f"balanced {ratio['balanced']:.3f}")  # fmt: skip
    assert ratio["packed"] > 1.2
    assert ratio["balanced"] < 1.05


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 4), st.booleans())
def test_balancing_keeps_budgets_and_the_emitted_samples(seed, n, batch_size, final):
    """With costs, each bucket emits the same samples in the same number of rows as without
    (same carry), every row fits its bucket, and no row costs more than the costliest row of
    the unbalanced plan of that bucket."""
    rng = np.random.default_rng(seed)
    buckets = [Bucket(100, 64), Bucket(300, 128)]
    sizes = [(int(rng.integers(1, 300)), int(rng.integers(0, 5)) * 16) for _ in range(n)]
    sizes = [(t, s) for t, s in sizes if any(b.fits(t, s) for b in buckets)] or [(5, 0)]
    costs = [t * rng.uniform(1, 3) + t * t * rng.uniform(0, 0.05) + 7 * s for t, s in sizes]
    forced = [i for i in range(len(sizes)) if rng.random() < 0.1]
    kw = dict(min_fill=0.9, max_carry=6, forced=forced, final=final)
    plain, carry = plan_window(sizes, buckets, batch_size, **kw)
    balanced, carry_b = plan_window(sizes, buckets, batch_size, costs=costs, **kw)
    assert carry_b == carry
    for h in range(len(buckets)):
        rows = [b for k, bins in plain if k == h for b in bins]
        rows_b = [b for k, bins in balanced if k == h for b in bins]
        assert len(rows_b) == len(rows)
        assert sorted(i for b in rows_b for i in b) == sorted(i for b in rows for i in b)
        for b in rows_b:
            assert b == sorted(b) and buckets[h].fits(*np.sum([sizes[i] for i in b], axis=0))
        cost = lambda b: sum(costs[i] for i in b)  # noqa: E731
        assert max(map(cost, rows_b), default=0) <= max(map(cost, rows), default=0) * (1 + 1e-12)
    assert all(1 <= len(bins) <= batch_size for _, bins in balanced)


def test_balance_rows_moves_nothing_over_a_budget():
    """Without budgets the best rows cost at most 9 ({0}, {1}, {2, 3, 4, 5}); the token budget
    forbids that ({2, 3, 4, 5} holds 150 tokens), and 10 is the best within it."""
    sizes = [(50, 0), (50, 0), (30, 0), (20, 0), (70, 0), (30, 0)]
    costs = [9.0, 8.0, 1.0, 1.0, 2.0, 1.0]
    bins = [[0, 1], [2, 3, 5], [4]]  # tokens 100, 80, 70 of 100
    rows = balance_rows(bins, sizes, costs, Bucket(100, 0))
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(sizes[i][0] for i in r) <= 100 for r in rows)
    assert max(sum(costs[i] for i in r) for r in rows) == 10.0
