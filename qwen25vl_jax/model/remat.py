"""Rematerialisation policies for the scanned layer bodies, chosen by name (a flag)."""

from __future__ import annotations

import jax

POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(fn, policy: str):
    """Wraps a scan body `fn(carry, xs)` with `jax.checkpoint` unless the policy is 'none'."""
    if policy not in POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; choose from {sorted(POLICIES)}")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=POLICIES[policy], prevent_cse=False)
