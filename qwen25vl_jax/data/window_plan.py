"""Packing one look-ahead window of samples into batches: which samples go together now, which
wait for the next window (a pure function; the pipeline's `PackIterator` calls it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from qwen25vl_jax.data.packing import Bucket, choose_bucket, first_fit_decreasing
from qwen25vl_jax.data.row_balance import balance_rows


def plan_window(
    sizes: Sequence[tuple[int, int]],
    buckets: Sequence[Bucket],
    batch_size: int,
    *,
    min_fill: float,
    max_carry: int,
    forced: Sequence[int] = (),
    final: bool = False,
    costs: Sequence[float] | None = None,
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
            emit = max(
                good // batch_size * batch_size, math.ceil(sum(must) / batch_size) * batch_size
            )
            while emit < full and sum(map(len, bins[emit:])) > max_carry - len(carry):
                emit += batch_size
        if costs is None or not emit:
            out = sorted(bins[:emit], key=lambda b: b[0])
        else:
            out = balance_rows(bins[:emit], sizes, costs, bucket)  # sorted by cost
        batches += [
            (h, sorted(out[k : k + batch_size], key=lambda b: b[0]))
            for k in range(0, len(out), batch_size)
        ]
        carry += [i for b in bins[emit:] for i in b]
    return sorted(batches, key=lambda hb: hb[1][0][0]), sorted(carry)
