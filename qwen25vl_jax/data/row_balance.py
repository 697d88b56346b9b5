"""Balancing packed rows by compute cost, so no data-parallel shard waits for another.

A global batch's rows are split over the (data, fsdp) devices; a step lasts as long as its
slowest shard. Packing by fill alone (`packing.first_fit_decreasing`) gives rows of equal
*length* but not equal *cost*: a row of one 8k-token sample pays 8k^2 attention where four 2k
samples pay 4 x 2k^2, and a row of images pays the ViT (linear in patches in window blocks,
quadratic per image / frame in full blocks) on top of the LLM. Here a sample's cost is its
analytic forward FLOPs (`model.cost.forward_flops`, the same count as MFU), which add over the
samples of a row; `balance_rows` moves samples between rows to even those sums, never breaking
a row's budgets, deterministically (a pure function of its inputs, so a resumed pipeline that
re-reads its window re-makes the same rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.model.cost import forward_flops


def sample_flops(cfg: ModelConfig, num_tokens: int, grids: Sequence[Sequence[int]]) -> float:
    """Forward FLOPs of one sample of `num_tokens` tokens whose media have `grids` (t, h, w)
    patches: its ViT, merger and LLM cost alone (full-attention segments are the frames)."""
    frames = [(int(t), int(h) * int(w)) for t, h, w in grids]
    cost = forward_flops(
        cfg,
        patches=float(sum(t * hw for t, hw in frames)),
        frames_sq=float(sum(t * hw * hw for t, hw in frames)),
        tokens=float(num_tokens),
        samples_sq=float(num_tokens) ** 2,
    )
    return sum(cost.values())


def shard_imbalance(row_costs: Sequence[float], num_shards: int) -> tuple[float, float]:
    """(max, mean) over `num_shards` data-parallel shards of one batch's cost, its rows split
    over the shards in order (rows [k*B/S, (k+1)*B/S) on shard k, as the batch axis is split);
    a missing row (a short final batch) costs 0."""
    rows = np.zeros(-(-len(row_costs) // num_shards) * num_shards)
    rows[: len(row_costs)] = row_costs
    shards = rows.reshape(num_shards, -1).sum(1)
    return float(shards.max()), float(shards.mean())


def _lpt(order: list[int], sizes, costs, bucket: Bucket, num_rows: int) -> list[list[int]] | None:
    """Largest cost first, each sample into the cheapest row that still fits it; None when
    some sample fits no row (the budgets are tighter than this greedy can meet)."""
    rows: list[list[int]] = [[] for _ in range(num_rows)]
    used = np.zeros((num_rows, 2), np.int64)
    load = np.zeros(num_rows)
    for i in order:
        fits = [r for r in range(num_rows) if bucket.fits(*(used[r] + sizes[i]))]
        if not fits:
            return None
        r = min(fits, key=lambda r: (load[r], r))
        rows[r].append(i)
        used[r] += sizes[i]
        load[r] += costs[i]
    return rows


def _improve(rows: list[list[int]], sizes, costs, bucket: Bucket, max_moves: int) -> None:
    """Local search in place: take the costliest row and move one of its samples to, or swap
    one with, a cheaper row when that lowers the larger of the two rows' costs and both rows
    still fit their budgets; stop when no such move exists (or after `max_moves`)."""
    used = [np.sum([sizes[i] for i in r], axis=0) if r else np.zeros(2, np.int64) for r in rows]
    load = [float(sum(costs[i] for i in r)) for r in rows]
    for _ in range(max_moves):
        top = max(range(len(rows)), key=lambda r: (load[r], -r))
        best = None  # (new max of the pair, row, sample out of top, sample into top or None)
        for r in sorted(range(len(rows)), key=lambda r: (load[r], r)):
            if r == top or load[r] >= load[top]:
                continue
            for a in rows[top]:
                for b in [None, *rows[r]]:
                    moved = costs[a] - (0.0 if b is None else costs[b])
                    if moved <= 0:
                        continue
                    pair = max(load[top] - moved, load[r] + moved)
                    if pair >= load[top] - 1e-9 * load[top] or (best and pair >= best[0]):
                        continue
                    delta = sizes[a] - (0 if b is None else sizes[b])
                    if bucket.fits(*(used[r] + delta)) and bucket.fits(*(used[top] - delta)):
                        best = (pair, r, a, b)
        if best is None:
            return
        _, r, a, b = best
        moved = costs[a] - (0.0 if b is None else costs[b])
        delta = sizes[a] - (0 if b is None else sizes[b])
        rows[top].remove(a)
        rows[r].append(a)
        if b is not None:
            rows[r].remove(b)
            rows[top].append(b)
        used[top], used[r] = used[top] - delta, used[r] + delta
        load[top], load[r] = load[top] - moved, load[r] + moved


def balance_rows(
    bins: Sequence[Sequence[int]],
    sizes: Sequence[tuple[int, int]],
    costs: Sequence[float],
    bucket: Bucket,
) -> list[list[int]]:
    """The samples of `bins` (indices into `sizes` (tokens, ViT slots) and `costs`, each bin
    fitting `bucket`) regrouped into as many rows, each fitting `bucket`, with costs as even as
    a local search can make them from two starts: the given bins, and a greedy (largest cost
    first into the cheapest row that fits it; no start when some sample fits no row). The start
    whose result has the cheaper costliest row wins, so the costliest row never costs more than
    the given bins' costliest. Rows come sorted by cost, so consecutive rows (one batch) cost
    alike; each row lists its indices in input order."""
    sizes_arr = {i: np.asarray(sizes[i], np.int64) for b in bins for i in b}
    samples = sorted(sizes_arr)
    order = sorted(samples, key=lambda i: (-costs[i], i))
    starts = [[list(b) for b in bins], _lpt(order, sizes_arr, costs, bucket, len(bins))]
    best = None
    for rows in filter(None, starts):
        _improve(rows, sizes_arr, costs, bucket, max_moves=4 * len(samples) + 8)
        loads = sorted((sum(costs[i] for i in r) for r in rows), reverse=True)
        if best is None or loads < best[0]:  # the lower costliest row (then the next ...)
            best = (loads, rows)
    rows = [sorted(r) for r in best[1]]
    return sorted(rows, key=lambda r: (sum(costs[i] for i in r), r))
