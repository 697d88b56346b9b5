"""The one declarative table between Hugging Face parameter names and our parameter tree.

Each `Rule` maps a released-layout name pattern (`{i}` = layer index) to a parameter path
(`param_paths`) and a transform kind, with both shapes derived from the config:
- "copy":   ours = hf.reshape(our_shape)                   (norms, biases, embeddings)
- "linear": ours = hf.T.reshape(our_shape)                 (torch Linear [out, in] -> [in, ...])
- "conv":   ours = hf.reshape(out, -1).T                   (Conv3d patch embedding -> one matmul)
Layered rules stack layer i at index i of a leading axis. The inverse of each kind gives the
export direction. `Rule.to_ours` / `Rule.to_hf` are the one implementation of the transforms
(blocked transposes, `transpose2d`), used by `load_hf` here and by `checkpoints_convert`.

transformers 5 saves the nested layout (`model.visual.`, `model.language_model.`); both
layouts are read, the released one is written.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen25vl_jax.config import ModelConfig, from_hf_config
from qwen25vl_jax.param_paths import flatten, join
from qwen25vl_jax.safetensors_io import SafetensorsDir


def transpose2d(x: np.ndarray, block: int = 256) -> np.ndarray:
    """`x.T` as a new C-contiguous array, copied in cache-sized blocks (~5x numpy's `.T.copy()`
    on large weights). Works on memory maps without reading them whole."""
    n, m = x.shape
    src = x.view(f"u{x.dtype.itemsize}") if x.dtype.kind not in "ub" else x  # plain-int copies
    out = np.empty((m, n), src.dtype)
    for i in range(0, n, block):
        for j in range(0, m, block):
            out[j : j + block, i : i + block] = src[i : i + block, j : j + block].T
    return out.view(x.dtype)


def _dims(c: ModelConfig) -> dict[str, int]:
    """Symbols for the shape specs of `TABLE`."""
    v, t = c.vision, c.text
    return {
        "vd": v.hidden_size, "vi": v.intermediate_size, "vh": v.num_heads, "vhd": v.head_dim,
        "vm": v.hidden_size * v.merge_unit, "C": v.in_channels, "Tp": v.temporal_patch_size,
        "P": v.patch_size, "pd": v.patch_dim, "td": t.hidden_size, "ti": t.intermediate_size,
        "nh": t.num_heads, "kh": t.num_kv_heads, "hd": t.head_dim, "V": t.vocab_size,
    }  # fmt: skip


def _shape(spec: str, dims: dict[str, int]) -> tuple[int, ...]:
    """'3*vd vd' -> (3 * vd, vd)."""
    return tuple(
        int(np.prod([int(f) if f.isdigit() else dims[f] for f in tok.split("*")]))
        for tok in spec.split()
    )


# released name ({i} = layer), our path, kind, HF shape, our shape (per layer).
# fmt: off
TABLE = [
    ("visual.patch_embed.proj.weight", "visual/patch_embed", "conv", "vd C Tp P P", "pd vd"),
    ("visual.blocks.{i}.norm1.weight", "visual/blocks/norm1", "copy", "vd", "vd"),
    ("visual.blocks.{i}.norm2.weight", "visual/blocks/norm2", "copy", "vd", "vd"),
    ("visual.blocks.{i}.attn.qkv.weight", "visual/blocks/qkv_kernel", "linear", "3*vd vd", "vd 3 vh vhd"),
    ("visual.blocks.{i}.attn.qkv.bias", "visual/blocks/qkv_bias", "copy", "3*vd", "3 vh vhd"),
    ("visual.blocks.{i}.attn.proj.weight", "visual/blocks/proj_kernel", "linear", "vd vd", "vh vhd vd"),
    ("visual.blocks.{i}.attn.proj.bias", "visual/blocks/proj_bias", "copy", "vd", "vd"),
    ("visual.blocks.{i}.mlp.gate_proj.weight", "visual/blocks/gate_kernel", "linear", "vi vd", "vd vi"),
    ("visual.blocks.{i}.mlp.gate_proj.bias", "visual/blocks/gate_bias", "copy", "vi", "vi"),
    ("visual.blocks.{i}.mlp.up_proj.weight", "visual/blocks/up_kernel", "linear", "vi vd", "vd vi"),
    ("visual.blocks.{i}.mlp.up_proj.bias", "visual/blocks/up_bias", "copy", "vi", "vi"),
    ("visual.blocks.{i}.mlp.down_proj.weight", "visual/blocks/down_kernel", "linear", "vd vi", "vi vd"),
    ("visual.blocks.{i}.mlp.down_proj.bias", "visual/blocks/down_bias", "copy", "vd", "vd"),
    ("visual.merger.ln_q.weight", "visual/merger/ln_q", "copy", "vd", "vd"),
    ("visual.merger.mlp.0.weight", "visual/merger/fc1_kernel", "linear", "vm vm", "vm vm"),
    ("visual.merger.mlp.0.bias", "visual/merger/fc1_bias", "copy", "vm", "vm"),
    ("visual.merger.mlp.2.weight", "visual/merger/fc2_kernel", "linear", "td vm", "vm td"),
    ("visual.merger.mlp.2.bias", "visual/merger/fc2_bias", "copy", "td", "td"),
    ("model.embed_tokens.weight", "decoder/embed", "copy", "V td", "V td"),
    ("model.layers.{i}.input_layernorm.weight", "decoder/layers/input_norm", "copy", "td", "td"),
    ("model.layers.{i}.post_attention_layernorm.weight", "decoder/layers/post_attention_norm", "copy", "td", "td"),
    ("model.layers.{i}.self_attn.q_proj.weight", "decoder/layers/q_kernel", "linear", "nh*hd td", "td nh hd"),
    ("model.layers.{i}.self_attn.q_proj.bias", "decoder/layers/q_bias", "copy", "nh*hd", "nh hd"),
    ("model.layers.{i}.self_attn.k_proj.weight", "decoder/layers/k_kernel", "linear", "kh*hd td", "td kh hd"),
    ("model.layers.{i}.self_attn.k_proj.bias", "decoder/layers/k_bias", "copy", "kh*hd", "kh hd"),
    ("model.layers.{i}.self_attn.v_proj.weight", "decoder/layers/v_kernel", "linear", "kh*hd td", "td kh hd"),
    ("model.layers.{i}.self_attn.v_proj.bias", "decoder/layers/v_bias", "copy", "kh*hd", "kh hd"),
    ("model.layers.{i}.self_attn.o_proj.weight", "decoder/layers/o_kernel", "linear", "td nh*hd", "nh hd td"),
    ("model.layers.{i}.mlp.gate_proj.weight", "decoder/layers/gate_kernel", "linear", "ti td", "td ti"),
    ("model.layers.{i}.mlp.up_proj.weight", "decoder/layers/up_kernel", "linear", "ti td", "td ti"),
    ("model.layers.{i}.mlp.down_proj.weight", "decoder/layers/down_kernel", "linear", "td ti", "ti td"),
    ("model.norm.weight", "decoder/final_norm", "copy", "td", "td"),
    ("lm_head.weight", "decoder/lm_head", "linear", "V td", "td V"),  # untied models only
]
# fmt: on


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of `TABLE`; kinds: copy (reshape), linear (transpose), conv (flatten + T)."""

    hf: str
    path: str
    kind: str
    hf_spec: str
    our_spec: str

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return _shape(self.hf_spec, _dims(cfg))

    def our_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return _shape(self.our_spec, _dims(cfg))

    def layers(self, cfg: ModelConfig) -> int | None:
        """Number of stacked layers, None for an unstacked weight."""
        if "{i}" not in self.hf:
            return None
        return cfg.vision.depth if self.hf.startswith("visual.") else cfg.text.num_layers

    def when(self, cfg: ModelConfig) -> bool:
        return self.hf != "lm_head.weight" or not cfg.text.tie_word_embeddings

    def to_ours(self, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        """One layer's released tensor (HF shape) -> ours (our shape)."""
        shape = self.our_shape(cfg)
        if self.kind == "copy":
            return x.reshape(shape)
        x2 = x if self.kind == "linear" else x.reshape(x.shape[0], -1)  # conv: [out, C*T*P*P]
        return transpose2d(x2).reshape(shape)

    def to_hf(self, y: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        """One layer of ours (our shape) -> the released tensor (HF shape)."""
        shape = self.hf_shape(cfg)
        if self.kind == "copy":
            return y.reshape(shape)
        if self.kind == "linear":
            return transpose2d(y.reshape(shape[1], shape[0]))
        return transpose2d(y.reshape(-1, shape[0])).reshape(shape)  # conv


RULES: list[Rule] = [Rule(*row) for row in TABLE]

# transformers-5 nested names -> released names (read side only).
_NESTED = [
    (re.compile(r"^model\.visual\."), "visual."),
    (re.compile(r"^model\.language_model\."), "model."),
]


def released_name(name: str) -> str:
    """Maps a transformers-5 nested name to the released layout (identity otherwise)."""
    for pat, repl in _NESTED:
        if pat.match(name):
            return pat.sub(repl, name, count=1)
    return name


def expected_names(cfg: ModelConfig) -> Iterator[tuple[Rule, int | None, str]]:
    """Every (rule, layer or None, released name) the config calls for."""
    for rule in RULES:
        if not rule.when(cfg):
            continue
        if rule.layers(cfg) is None:
            yield rule, None, rule.hf
        else:
            for i in range(rule.layers(cfg)):
                yield rule, i, rule.hf.format(i=i)


def stacked_shape(rule: Rule, cfg: ModelConfig) -> tuple[int, ...]:
    our, n = rule.our_shape(cfg), rule.layers(cfg)
    return our if n is None else (n, *our)


def read_rule(rule: Rule, cfg: ModelConfig, get: Callable[[str], np.ndarray], dtype) -> np.ndarray:
    """Reads one of our (stacked) arrays through `get(released_name)`; checks HF shapes."""
    n = rule.layers(cfg)
    names = [rule.hf] if n is None else [rule.hf.format(i=i) for i in range(n)]
    out = np.empty(stacked_shape(rule, cfg), dtype)
    for i, name in enumerate(names):
        x = get(name)
        if tuple(x.shape) != rule.hf_shape(cfg):
            raise ValueError(
                f"tensor {name!r}: shape {tuple(x.shape)}, config.json implies {rule.hf_shape(cfg)}"
            )
        y = rule.to_ours(np.asarray(x), cfg).astype(dtype)
        if n is None:
            out[...] = y
        else:
            out[i] = y
    return out


def check_names(cfg: ModelConfig, names: list[str], source: str) -> dict[str, str]:
    """Maps released names to the source's names; errors on missing or unexpected tensors."""
    by_released = {released_name(n): n for n in names}
    want = {name for _, _, name in expected_names(cfg)}
    if cfg.text.tie_word_embeddings:
        by_released.pop("lm_head.weight", None)  # tied copies are dropped, as transformers does
    for what, found in (
        ("missing", want - by_released.keys()),
        ("unexpected", by_released.keys() - want),
    ):
        if found:
            found = sorted(found)
            more = f" (+{len(found) - 8} more)" if len(found) > 8 else ""
            raise ValueError(f"{source}: {what} tensors: {', '.join(found[:8])}{more}")
    return by_released


def load_hf(path: str | os.PathLike, *, param_dtype=jnp.float32):
    """Loads a Hugging Face checkpoint directory into a `Qwen25VL`; returns (model, config).

    Tensors are read lazily (memory-mapped) one weight kind at a time.
    """
    from qwen25vl_jax.model.qwen25vl import Qwen25VL

    path = os.fspath(path)
    cfg = from_hf_config(path)
    tensors = SafetensorsDir(path)
    by_released = check_names(cfg, tensors.keys(), path)
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype))
    graphdef, state = nnx.split(abstract)
    values = {}

    def get(name: str) -> np.ndarray:
        return tensors.get(by_released[name])

    for rule in RULES:
        if rule.when(cfg):
            values[rule.path] = jnp.asarray(read_rule(rule, cfg, get, np.dtype(param_dtype)))
    flat = nnx.to_flat_state(state)
    for keys, var in flat:
        if join(keys) not in values:
            raise ValueError(f"{path}: no rule fills parameter {join(keys)}")
        var.set_value(values[join(keys)])
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), cfg


def to_hf_tensors(model, cfg: ModelConfig, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (released name, array) for every tensor of `model`, one layer at a time."""
    params = flatten(nnx.to_pure_dict(nnx.state(model)))
    for rule, layer, name in expected_names(cfg):
        node = params[rule.path]
        arr = np.asarray(jax.device_get(node if layer is None else node[layer]))
        out = rule.to_hf(arr, cfg)
        yield name, out if dtype is None else out.astype(dtype)
