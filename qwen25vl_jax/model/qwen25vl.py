"""The whole Qwen2.5-VL model: ViT -> merger -> vision tokens gathered into the embeddings ->
decoder -> logits. A pure function of (parameters, `ModelInputs`) once split with `nnx.split`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.model.decoder import Decoder
from qwen25vl_jax.model.inputs import ModelInputs
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.model.rope import mrope
from qwen25vl_jax.model.vision import VisionTower
from qwen25vl_jax.sharding import constrain


class Qwen25VL(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        self.visual = VisionTower(cfg.vision, rngs=rngs, param_dtype=param_dtype)
        self.decoder = Decoder(cfg.text, rngs=rngs, param_dtype=param_dtype)

    def embed(self, inputs: ModelInputs, opts: RunOptions = RunOptions()) -> jax.Array:
        """Token embeddings with the vision tokens placed at their pad tokens: [B, L, D].

        A gather (not a scatter): each position reads merged token `vision_index` when >= 0,
        so shapes stay static and the backward pass is a plain scatter-add.
        """
        x = self.decoder.embed_tokens(inputs.tokens, dtype=opts.dtype)
        if inputs.patches.shape[1] == 0:  # static: a text-only batch skips the ViT
            return x
        merged = self.visual(inputs.patches, inputs.vit_positions, inputs.vit_segment_ids, opts)
        # every sequence shard may read any merged token: gather them (N / 4 x D, small)
        # rather than leave XLA to route the [B, L] gather across the `context` split
        merged = constrain(merged, ("batch", None, "act_embed"))
        idx = jnp.maximum(inputs.vision_index, 0)[..., None]
        gathered = jnp.take_along_axis(merged, idx, axis=1).astype(x.dtype)
        return jnp.where(inputs.vision_index[..., None] >= 0, gathered, x)

    def hidden(self, inputs: ModelInputs, opts: RunOptions = RunOptions()) -> jax.Array:
        """Final (normed) hidden states [B, L, D]: causal attention within each segment."""
        t = self.cfg.text
        x = self.embed(inputs, opts)
        cos, sin = mrope(
            inputs.positions, head_dim=t.head_dim, theta=t.rope_theta, sections=t.mrope_section
        )
        return self.decoder(x, cos, sin, inputs.segment_ids, opts)[0]

    def __call__(self, inputs: ModelInputs, opts: RunOptions = RunOptions()) -> jax.Array:
        """float32 logits [B, L, vocab]."""
        return self.decoder.logits(self.hidden(inputs, opts))


def forward(graphdef: nnx.GraphDef, state: nnx.State, inputs: ModelInputs, opts=RunOptions()):
    """The pure function to jit: logits of `inputs` under parameters `state`."""
    return nnx.merge(graphdef, state)(inputs, opts)
