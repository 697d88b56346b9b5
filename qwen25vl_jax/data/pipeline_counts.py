"""The input pipeline's counters (records read, samples, skipped records by reason, padding) and
the packing efficiency computed from them. JSON-able: part of the iterator state."""

from __future__ import annotations

from typing import Any

from qwen25vl_jax.data.records import REASONS


def new_counts() -> dict[str, Any]:
    """Pipeline counters (JSON-able; part of the iterator state)."""
    return {
        "records": 0,
        "samples": 0,
        "truncated": 0,
        "skipped": dict.fromkeys(REASONS, 0),
        "batches": 0,
        "examples": 0,
        "padding_examples": 0,
        "real_tokens": 0,
        "token_capacity": 0,
        "real_patches": 0,
        "patch_capacity": 0,
    }


def efficiency(counts: dict[str, Any]) -> dict[str, float]:
    """Packing efficiency: real tokens / token capacity and real patches / patch capacity."""
    return {
        "text": counts["real_tokens"] / max(counts["token_capacity"], 1),
        "patches": counts["real_patches"] / max(counts["patch_capacity"], 1),
    }


def skip_metrics(counts: dict[str, Any]) -> dict[str, float]:
    """Scalars for the training log: ``skipped_records`` and ``skipped_fraction`` (of the
    records read so far) and ``skipped_<reason>`` for each reason seen."""
    skipped = counts["skipped"]
    total = sum(skipped.values())
    out = {"skipped_records": float(total), "skipped_fraction": total / max(counts["records"], 1)}
    out.update({f"skipped_{k}": float(v) for k, v in skipped.items() if v})
    return out


def skip_warning(counts: dict[str, Any], fraction: float) -> str | None:
    """A warning when more than ``fraction`` of the records read were skipped, else None."""
    m = skip_metrics(counts)
    if m["skipped_fraction"] <= fraction:
        return None
    reasons = {k: v for k, v in counts["skipped"].items() if v}
    return (
        f"{100 * m['skipped_fraction']:.1f}% of the {counts['records']} records read were "
        f"skipped (warning above {100 * fraction:g}%): {reasons}"
    )
