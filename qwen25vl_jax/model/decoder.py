"""The Qwen2.5 decoder: GQA with q/k/v bias, RMSNorm, SwiGLU, 3-D multimodal rope; scanned."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen25vl_jax.config import TextConfig
from qwen25vl_jax.model.attention import attention
from qwen25vl_jax.model.layers import cast, param, project, rms_norm, swiglu
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.model.remat import remat
from qwen25vl_jax.model.rope import apply_rope
from qwen25vl_jax.sharding import constrain

ACT = ("batch", "length", "act_embed")


class DecoderLayers(nnx.Module):
    """`num_layers` decoder layers stacked on a leading `layers` axis."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        n, d, i = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        nh, kh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        p = lambda shape, names, init="normal": param(
            rngs, (n, *shape), ("layers", *names), dtype=param_dtype, init=init
        )
        self.input_norm = p((d,), ("embed",), "ones")
        self.post_attention_norm = p((d,), ("embed",), "ones")
        self.q_kernel = p((d, nh, hd), ("embed", "heads", "head_dim"))
        self.q_bias = p((nh, hd), ("heads", "head_dim"), "zeros")
        self.k_kernel = p((d, kh, hd), ("embed", "kv_heads", "head_dim"))
        self.k_bias = p((kh, hd), ("kv_heads", "head_dim"), "zeros")
        self.v_kernel = p((d, kh, hd), ("embed", "kv_heads", "head_dim"))
        self.v_bias = p((kh, hd), ("kv_heads", "head_dim"), "zeros")
        self.o_kernel = p((nh, hd, d), ("heads", "head_dim", "embed"))
        self.gate_kernel = p((d, i), ("embed", "mlp"))
        self.up_kernel = p((d, i), ("embed", "mlp"))
        self.down_kernel = p((i, d), ("mlp", "embed"))


def qkv_projection(p: dict, x: jax.Array, cos, sin):
    """q [B, T, N, H], k and v [B, T, K, H] with rope applied to q and k. x: normed [B, T, D]."""
    q = project(x, p["q_kernel"]) + p["q_bias"]  # [B, T, N, H]
    k = project(x, p["k_kernel"]) + p["k_bias"]  # [B, T, K, H]
    v = project(x, p["v_kernel"]) + p["v_bias"]
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def layer_output(p: dict, x: jax.Array, attn: jax.Array, eps: float) -> jax.Array:
    """Residual adds of the attention output attn [B, T, N, H] and of the MLP."""
    x = x + project(attn, p["o_kernel"], in_axes=2)
    y = rms_norm(x, p["post_attention_norm"], eps)
    return x + swiglu(y, p["gate_kernel"], p["up_kernel"], p["down_kernel"])


def decoder_layer(
    p: dict, x, cos, sin, segment_ids, *, cfg: TextConfig, backend, cache=None, layer=None
):
    """One decoder layer, used by training, prefill and decode. Returns (x [B, T, D], cache).

    p: one layer's parameters; x: [B, T, D]; cos, sin: float32 [B, T, H]; segment_ids: int
    [B, T] (0 = padding; attention is causal within each segment).
    cache: None, or a `KVCache` (inference/kv_cache.py) and `layer` this layer's index in it.
    The new keys and values are written at the cache's current slot; a prompt (T > 1, written
    from slot 0) then attends to itself exactly as without a cache, and a decode step (T == 1)
    attends to every valid cache slot up to its own.
    """
    y = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
    q, k, v = qkv_projection(p, y, cos, sin)
    shared = dict(q_segments=segment_ids, causal=True, scale=cfg.head_dim**-0.5, backend=backend)
    if cache is not None:
        cache = cache.write(layer, k, v)
    if cache is None or x.shape[1] > 1:
        o = attention(q, k, v, kv_segments=segment_ids, **shared)
    else:
        k_all, v_all = cache.read(layer, q.dtype)  # [B, K, S, H]
        o = attention(
            q,
            k_all,
            v_all,
            kv_segments=cache.valid.astype(jnp.int32),
            q_offset=cache.index,
            kv_heads_major=True,
            **shared,
        )
    return constrain(layer_output(p, x, o, cfg.rms_norm_eps), ACT), cache


class Decoder(nnx.Module):
    """Token embedding, the stacked layers, the final norm and the (tied or untied) lm_head."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        d, v = cfg.hidden_size, cfg.vocab_size
        self.embed = param(rngs, (v, d), ("vocab", "embed"), dtype=param_dtype)
        self.layers = DecoderLayers(cfg, rngs=rngs, param_dtype=param_dtype)
        self.final_norm = param(rngs, (d,), ("embed",), dtype=param_dtype, init="ones")
        if not cfg.tie_word_embeddings:
            self.lm_head = param(rngs, (d, v), ("embed", "vocab"), dtype=param_dtype)

    def embed_tokens(self, tokens: jax.Array, *, dtype) -> jax.Array:
        """tokens: int [B, L] -> [B, L, D]."""
        return jnp.take(self.embed[...], tokens, axis=0).astype(dtype)

    def layer_params(self, dtype) -> dict:
        return cast(nnx.to_pure_dict(nnx.state(self.layers)), dtype)

    def __call__(self, x, cos, sin, segment_ids, opts: RunOptions, cache=None):
        """The layers and the final norm: (final hidden states [B, T, D] (normed), cache).

        x: [B, T, D] input embeddings; cos, sin: float32 [B, T, H]; segment_ids: int [B, T].
        cache: None (training, scoring) or a `KVCache` that this call fills from its current
        slot (a whole prompt, or one token per row) and advances by T.
        """
        cfg = self.cfg
        if cache is not None:
            cache = cache.mark_valid(segment_ids)

        # the cache rides in the carry: each layer updates its own slots in place
        def body(carry, xs):
            x, cache = carry
            p, layer = xs
            return decoder_layer(
                p, x, cos, sin, segment_ids, cfg=cfg, backend=opts.backend, cache=cache, layer=layer
            ), None

        xs = (self.layer_params(opts.dtype), jnp.arange(cfg.num_layers, dtype=jnp.int32))
        (x, cache), _ = jax.lax.scan(remat(body, opts.remat), (x, cache), xs, unroll=opts.unroll)
        if cache is not None:
            cache = cache.advance(x.shape[1])
        return rms_norm(x, self.final_norm[...].astype(opts.dtype), cfg.rms_norm_eps), cache

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [B, L, D] -> float32 logits [B, L, V] (matmul accumulates in float32)."""
        if self.cfg.tie_word_embeddings:
            w = self.embed[...].astype(h.dtype)
            out = jnp.einsum("BLD,VD->BLV", h, w, preferred_element_type=jnp.float32)
        else:
            w = self.lm_head[...].astype(h.dtype)
            out = jnp.einsum("BLD,DV->BLV", h, w, preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "length", "act_vocab"))
