"""A static-size KV cache in GQA layout, written and read by the one decoder layer.

The cache holds every layer's keys and values for `S` slots, `[layers, batch, kv_heads, S,
head_dim]` (kv heads are not repeated: GQA groups share them at attention time), in bf16 or
float32. Heads before slots is the layout both attention contractions read without a
transpose (with [B, S, K, H], XLA CPU copies a layer's whole cache on every step).

Prompts are left padded, so one write index serves the whole batch: the prefill fills slots
[0, L) and decode step s writes slot L + s - 1. `valid` marks the slots holding real tokens
(False on the prompt's padding and on slots not yet written); a decode step attends to every
valid slot up to its own (`model.attention` with the valid slots as key segments and a causal
offset), so every shape is static and one compiled step serves every position.

`Decoder.__call__(..., cache=cache)` is the only user: it marks the new slots valid, each layer
(`decoder.decoder_layer`) writes its keys and values and reads its layer back, then it advances
the index. The whole cache rides in the layer scan's carry and is updated in place one layer's
slots at a time (a scanned output would rewrite all of it every step).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen25vl_jax.config import TextConfig
from qwen25vl_jax.sharding import constrain

# Logical axis names of the cache arrays: kv heads over `tensor`, batch over `data`.
CACHE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """k, v: [layers, B, K, S, H] (cache dtype); valid: bool[B, S]; index: int32[] = next slot."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    @property
    def size(self) -> int:
        """S, the number of slots (static)."""
        return self.k.shape[3]

    def mark_valid(self, segment_ids: jax.Array) -> KVCache:
        """Slots [index, index + T) hold the new tokens: valid where segment_ids [B, T] > 0."""
        valid = jax.lax.dynamic_update_slice_in_dim(self.valid, segment_ids > 0, self.index, 1)
        return dataclasses.replace(self, valid=valid)

    def write(self, layer: jax.Array, k: jax.Array, v: jax.Array) -> KVCache:
        """Stores one layer's new keys / values k, v [B, T, K, H] at slots [index, index + T)."""
        start = (layer, 0, 0, self.index, 0)
        new = lambda a: a.transpose(0, 2, 1, 3)[None].astype(self.k.dtype)  # [1, B, K, T, H]
        k_all = constrain(jax.lax.dynamic_update_slice(self.k, new(k), start), CACHE_AXES)
        v_all = constrain(jax.lax.dynamic_update_slice(self.v, new(v), start), CACHE_AXES)
        return dataclasses.replace(self, k=k_all, v=v_all)

    def read(self, layer: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        """One layer's keys and values [B, K, S, H] in the compute dtype."""
        get = lambda a: jax.lax.dynamic_index_in_dim(a, layer, 0, keepdims=False).astype(dtype)
        return get(self.k), get(self.v)

    def advance(self, num_tokens: int) -> KVCache:
        return dataclasses.replace(self, index=self.index + num_tokens)


def init_cache(cfg: TextConfig, batch: int, size: int, dtype=jnp.bfloat16) -> KVCache:
    """An empty cache of `size` slots for `batch` sequences."""
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, size, cfg.head_dim)
    k = constrain(jnp.zeros(shape, dtype), CACHE_AXES)
    v = constrain(jnp.zeros(shape, dtype), CACHE_AXES)
    return KVCache(k, v, jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32))
