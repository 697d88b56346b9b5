"""The Qwen2.5-VL vision tower: 3-D patch embedding, window/full attention blocks, merger.

Tokens live in *window layout* (see `indices.vision_layout`): the host places each image's
patches into windows of `S = (window_size / patch_size)^2` slots (64 for the release), padding
ragged border windows. Windowed blocks attend inside each [S] window (cost linear in patches);
full-attention blocks attend over the whole row, restricted by segment ids to one image or one
video frame (the reference's full-attention segments are per temporal slice).

Under a mesh with a `context` axis the slots N are split over it: windowed blocks stay local to
each shard (windows are contiguous runs of S slots), full blocks attend across shards through
`attention`'s context path (an image or a video frame may span shards).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen25vl_jax.config import VisionConfig
from qwen25vl_jax.model.attention import attention
from qwen25vl_jax.model.layers import cast, param, project, rms_norm, swiglu
from qwen25vl_jax.model.merger import PatchMerger
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.model.remat import remat
from qwen25vl_jax.model.rope import apply_rope, vision_rope
from qwen25vl_jax.sharding import constrain

# ViT activations [B, N, D]: N split over `context` (whole windows per shard when N is a
# multiple of context x window_patches, so windowed blocks need no communication)
VIT_ACT = ("batch", "vit_length", "act_embed")


class VisionBlocks(nnx.Module):
    """`depth` ViT blocks stacked on a leading `layers` axis (one array per weight kind)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        n, d, h, hd, i = (
            cfg.depth,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        )
        p = lambda shape, names, init="normal": param(
            rngs, (n, *shape), ("layers", *names), dtype=param_dtype, init=init
        )
        self.norm1 = p((d,), ("vit_embed",), "ones")
        self.norm2 = p((d,), ("vit_embed",), "ones")
        self.qkv_kernel = p((d, 3, h, hd), ("vit_embed", None, "vit_heads", "head_dim"))
        self.qkv_bias = p((3, h, hd), (None, "vit_heads", "head_dim"), "zeros")
        self.proj_kernel = p((h, hd, d), ("vit_heads", "head_dim", "vit_embed"))
        self.proj_bias = p((d,), ("vit_embed",), "zeros")
        self.gate_kernel = p((d, i), ("vit_embed", "vit_mlp"))
        self.gate_bias = p((i,), ("vit_mlp",), "zeros")
        self.up_kernel = p((d, i), ("vit_embed", "vit_mlp"))
        self.up_bias = p((i,), ("vit_mlp",), "zeros")
        self.down_kernel = p((i, d), ("vit_mlp", "vit_embed"))
        self.down_bias = p((d,), ("vit_embed",), "zeros")


def vision_block(p: dict, x, cos, sin, segment_ids, *, full: bool, cfg: VisionConfig, backend):
    """One ViT block on window-layout tokens.

    p: one layer's parameters (VisionBlocks fields without the layers axis); x: [B, N, D];
    cos, sin: float32 [B, N, head_dim]; segment_ids: int [B, N] (frame id, 0 = padding).
    full: attend within each segment over the whole row; else within each S-slot window.
    """
    b, n, d = x.shape
    eps = cfg.rms_norm_eps
    y = rms_norm(x, p["norm1"], eps)
    qkv = project(y, p["qkv_kernel"]) + p["qkv_bias"]  # [B, N, 3 (q, k, v), heads, head_dim]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    opts = dict(causal=False, scale=cfg.head_dim**-0.5, backend=backend)
    if full:
        o = attention(q, k, v, q_segments=segment_ids, kv_segments=segment_ids, **opts)
    else:
        s = cfg.window_patches
        win = lambda t: t.reshape(b * n // s, s, *t.shape[2:])  # [B*W, S, ...]
        seg = win(segment_ids)
        # context=None: a window's S slots are not the split sequence (windows are)
        o = attention(win(q), win(k), win(v), q_segments=seg, kv_segments=seg, context=None, **opts)
        o = o.reshape(b, n, *o.shape[2:])
    x = x + project(o, p["proj_kernel"], in_axes=2) + p["proj_bias"]
    y = rms_norm(x, p["norm2"], eps)
    mlp_bias = (p["gate_bias"], p["up_bias"], p["down_bias"])
    out = x + swiglu(y, p["gate_kernel"], p["up_kernel"], p["down_kernel"], mlp_bias)
    return constrain(out, VIT_ACT)


class VisionTower(nnx.Module):
    """Patches in window layout -> merged vision tokens for the decoder."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        self.patch_embed = param(
            rngs, (cfg.patch_dim, cfg.hidden_size), ("patch", "vit_embed"), dtype=param_dtype
        )
        self.blocks = VisionBlocks(cfg, rngs=rngs, param_dtype=param_dtype)
        self.merger = PatchMerger(cfg, rngs=rngs, param_dtype=param_dtype)

    def encode(self, patches, positions, segment_ids, opts: RunOptions) -> jax.Array:
        """Runs the patch embedding and all blocks, before the merger.

        patches: float [B, N, patch_dim] (N a multiple of `window_patches`); positions: int
        [B, N, 2]; segment_ids: int [B, N]. Returns [B, N, hidden_size] in `opts.dtype`.
        """
        cfg, dtype = self.cfg, opts.dtype
        x = jnp.einsum("BNP,PD->BND", patches.astype(dtype), self.patch_embed[...].astype(dtype))
        x = constrain(x, VIT_ACT)
        cos, sin = vision_rope(positions, head_dim=cfg.head_dim, theta=cfg.rope_theta)
        stacked = cast(nnx.to_pure_dict(nnx.state(self.blocks)), dtype)
        # one scan per run of consecutive blocks of the same kind (window / full): the kind is
        # static in each body, so nothing computes or compiles the attention it does not use
        for start, stop, full in block_runs(cfg):

            def body(x, p, full=full):
                out = vision_block(
                    p, x, cos, sin, segment_ids, full=full, cfg=cfg, backend=opts.backend
                )
                return out, None

            run = jax.tree.map(lambda a, start=start, stop=stop: a[start:stop], stacked)
            x, _ = jax.lax.scan(remat(body, opts.remat), x, run, unroll=opts.unroll)
        return x

    def __call__(self, patches, positions, segment_ids, opts: RunOptions) -> jax.Array:
        """Merged tokens [B, N / 4, out_hidden_size]; slot u merges layout patches 4u..4u+3."""
        return self.merger(self.encode(patches, positions, segment_ids, opts), dtype=opts.dtype)


def block_runs(cfg: VisionConfig) -> list[tuple[int, int, bool]]:
    """(start, stop, full) for each run of consecutive blocks of one attention kind."""
    full = set(cfg.fullatt_block_indexes)
    runs, start = [], 0
    for i in range(1, cfg.depth + 1):
        if i == cfg.depth or (i in full) != (start in full):
            runs.append((start, i, start in full))
            start = i
    return runs
