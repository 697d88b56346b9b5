"""A static-size KV cache in GQA layout and the decoder passes that fill and read it.

The cache holds every layer's keys and values for `S` slots, `[layers, batch, kv_heads, S,
head_dim]` (kv heads are not repeated: GQA groups share them at attention time), in bf16 or
float32. Heads before slots is the layout both attention contractions read without a
transpose (with [B, S, K, H], XLA CPU copies a layer's whole cache on every step).

Prompts are left padded, so one write index serves the whole batch: the prefill fills slots
[0, L) and decode step s writes slot L + s - 1. `valid` marks the slots holding real tokens
(False on the prompt's padding and on slots not yet written); attention reads all `S` slots
under that mask, so every shape is static and one compiled step serves every position.

The layer maths are the decoder's own pure pieces (`qkv_projection`, `layer_output`), so the
cached passes compute exactly what `Decoder.__call__` does, plus the cache traffic. The prefill
attends with `model.attention.attention` (any backend); a decode step has one query per row
and attends with `cached_attention`, the same float32-softmax maths on the cache layout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen25vl_jax.config import TextConfig
from qwen25vl_jax.model.attention import attention, segment_mask
from qwen25vl_jax.model.decoder import ACT, qkv_projection
from qwen25vl_jax.model.decoder import layer_output as _layer_output
from qwen25vl_jax.model.layers import rms_norm
from qwen25vl_jax.sharding import constrain

# Logical axis names of the cache arrays: kv heads over `tensor`, batch over `data`.
CACHE_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")
_NEG = -1e30  # as model.attention: finite, so a row with no valid key cannot give NaN


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


def init_cache(cfg: TextConfig, batch: int, size: int, dtype=jnp.bfloat16) -> KVCache:
    """An empty cache of `size` slots for `batch` sequences."""
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, size, cfg.head_dim)
    k = constrain(jnp.zeros(shape, dtype), CACHE_AXES)
    v = constrain(jnp.zeros(shape, dtype), CACHE_AXES)
    return KVCache(k, v, jnp.zeros((batch, size), bool), jnp.zeros((), jnp.int32))


def prefill_layers(
    layer_params: dict, x: jax.Array, cos, sin, segment_ids: jax.Array, cache: KVCache, *,
    cfg: TextConfig, backend,
) -> tuple[jax.Array, KVCache]:  # fmt: skip
    """The decoder layers over a whole (left-padded) prompt, storing its keys and values.

    layer_params: the stacked per-layer dict (`Decoder.layer_params`); x: [B, L, D] embeddings;
    cos, sin: float32 [B, L, H]; segment_ids: int32[B, L] (0 = padding), attention as the
    uncached model (causal within the segment). Writes slots [0, L) of an empty `cache`.
    Returns the last layer's output [B, L, D] (before the final norm) and the cache.
    """
    mask = segment_mask(segment_ids, segment_ids, causal=True)
    scale = cfg.head_dim**-0.5

    def body(x, p):
        y = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
        q, k, v = qkv_projection(p, y, cos, sin)
        o = attention(q, k, v, mask, scale=scale, backend=backend)
        x = constrain(_layer_output(p, x, o, cfg.rms_norm_eps), ACT)
        to_cache = lambda a: a.transpose(0, 2, 1, 3).astype(cache.k.dtype)  # [B, K, L, H]
        return x, (to_cache(k), to_cache(v))

    x, (ks, vs) = jax.lax.scan(body, x, layer_params)  # ks, vs: [layers, B, K, L, H]
    length = x.shape[1]
    k = constrain(jax.lax.dynamic_update_slice_in_dim(cache.k, ks, 0, axis=3), CACHE_AXES)
    v = constrain(jax.lax.dynamic_update_slice_in_dim(cache.v, vs, 0, axis=3), CACHE_AXES)
    valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, segment_ids > 0, 0, axis=1)
    return x, KVCache(k, v, valid, jnp.asarray(length, jnp.int32))


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float):
    """One query per row against a cache layer, grouped-query.

    q: [B, 1, N, H]; k, v: [B, K, S, H] with N % K == 0; mask: bool [B, S] (True = attend).
    Returns [B, 1, N, H] in q's dtype; logits and softmax in float32, as `attention`.
    """
    b, _, n, h = q.shape
    kh = k.shape[1]
    qg = q.reshape(b, kh, n // kh, h)  # [batch, kv_heads, group, head_dim]
    logits = jnp.einsum("BKGH,BKSH->BKGS", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None, None], logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGS,BKSH->BKGH", probs, v).reshape(b, 1, n, h).astype(q.dtype)


def decode_layers(
    layer_params: dict, x: jax.Array, cos, sin, cache: KVCache, *, cfg: TextConfig
) -> tuple[jax.Array, KVCache]:
    """The decoder layers for one new token per sequence, attending to the cache.

    x: [B, 1, D] embeddings of the new tokens; cos, sin: float32 [B, 1, H]. The new keys and
    values go to slot `cache.index` (every row: prompts are left padded), which then attends
    to every valid slot up to itself. Returns the output [B, 1, D] and the advanced cache.
    """
    idx = cache.index
    valid = jax.lax.dynamic_update_slice_in_dim(
        cache.valid, jnp.ones((x.shape[0], 1), bool), idx, axis=1
    )
    mask = valid & (jnp.arange(cache.size) <= idx)  # [B, S]
    scale = cfg.head_dim**-0.5
    dtype = x.dtype

    # The whole cache rides in the carry and is updated in place one layer slot at a time
    # (a scanned ys output would rewrite all of it every step).
    def body(carry, xs):
        x, k_all, v_all = carry
        p, layer = xs
        y = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
        q, k, v = qkv_projection(p, y, cos, sin)
        start = (layer, 0, 0, idx, 0)
        new = lambda a: a.transpose(0, 2, 1, 3)[None].astype(k_all.dtype)  # [1, B, K, 1, H]
        k_all = jax.lax.dynamic_update_slice(k_all, new(k), start)
        v_all = jax.lax.dynamic_update_slice(v_all, new(v), start)
        k_l = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False).astype(dtype)
        v_l = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False).astype(dtype)
        o = cached_attention(q, k_l, v_l, mask, scale=scale)
        x = constrain(_layer_output(p, x, o, cfg.rms_norm_eps), ACT)
        return (x, k_all, v_all), None

    layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    (x, k, v), _ = jax.lax.scan(body, (x, cache.k, cache.v), (layer_params, layers))
    return x, KVCache(constrain(k, CACHE_AXES), constrain(v, CACHE_AXES), valid, idx + 1)
