"""Model configuration: frozen dataclasses, released presets, and `from_hf_config`.

Released `config.json` values differ from transformers' class defaults (vision hidden size 1280,
`tokens_per_second` 2, vision MLP width 3420/3456): presets hold the released values, and
`from_hf_config` reads a checkpoint's own `config.json`, which is always authoritative.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from qwen25vl_jax.dataclass_dict import replace_from_plain

# the special-token id fields of `ModelConfig` (read from config.json, set by tokenizers)
TOKEN_ID_FIELDS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "bos_token_id",
    "eos_token_id",
)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The ViT, the 2x2 patch merger and the vision-side constants of the preprocessing."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    tokens_per_second: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened 3-D patch: C * T * P * P (1176 for the release)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches merged into one LLM token (4)."""
        return self.spatial_merge_size**2

    @property
    def window_merge_side(self) -> int:
        """Merge units along one side of an attention window (112 / 14 / 2 = 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @property
    def window_patches(self) -> int:
        """Patches in one full window: (window_size / patch_size)^2 = 64 for the release."""
        return self.window_merge_side**2 * self.merge_unit

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision hidden_size {self.hidden_size} % num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"vision head_dim {self.head_dim} must be a multiple of 4 (2-D rope)")
        if self.window_merge_side < 1:
            raise ValueError(f"window_size {self.window_size} smaller than one merge unit")
        if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes {self.fullatt_block_indexes} outside depth")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2.5 decoder."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} % num_kv_heads {self.num_kv_heads}")
        if 2 * sum(self.mrope_section) != self.head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole Qwen2.5-VL model plus its special token ids."""

    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    # Where the text after a video resumes its 3-D positions. "spatial": start + max(h, w)
    # (transformers 5.24, the parity reference). "max": the largest position so far + 1
    # (Qwen's training code and transformers 4.x). They differ when a video's temporal
    # positions outrun its grid, and only "max" agrees with KV-cache decoding, which places new
    # tokens after the largest prompt position (rope_deltas): train with "max" to generate
    # about such videos. Written to config.json only when not the default.
    position_after_video: str = "spatial"

    def __post_init__(self):
        if self.position_after_video not in ("spatial", "max"):
            raise ValueError(
                f"position_after_video must be 'spatial' or 'max': {self.position_after_video!r}"
            )
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {self.vision.out_hidden_size} != text hidden_size "
                f"{self.text.hidden_size}"
            )

    # ---- presets: the released config.json values -------------------------------------------
    @classmethod
    def qwen25vl_3b(cls) -> ModelConfig:
        return cls(
            vision=VisionConfig(intermediate_size=3420, out_hidden_size=2048),
            text=TextConfig(
                vocab_size=151936,
                hidden_size=2048,
                intermediate_size=11008,
                num_layers=36,
                num_heads=16,
                num_kv_heads=2,
                tie_word_embeddings=True,
            ),
        )

    @classmethod
    def qwen25vl_7b(cls) -> ModelConfig:
        return cls(
            vision=VisionConfig(intermediate_size=3420, out_hidden_size=3584), text=TextConfig()
        )

    @classmethod
    def qwen25vl_32b(cls) -> ModelConfig:
        return cls(
            vision=VisionConfig(intermediate_size=3456, out_hidden_size=5120),
            text=TextConfig(
                hidden_size=5120,
                intermediate_size=27648,
                num_layers=64,
                num_heads=40,
                num_kv_heads=8,
            ),
        )

    @classmethod
    def qwen25vl_72b(cls) -> ModelConfig:
        return cls(
            vision=VisionConfig(intermediate_size=3456, out_hidden_size=8192),
            text=TextConfig(
                hidden_size=8192,
                intermediate_size=29568,
                num_layers=80,
                num_heads=64,
                num_kv_heads=8,
            ),
        )

    @classmethod
    def tiny(cls, vision: dict[str, Any] | None = None, **text_overrides: Any) -> ModelConfig:
        """A small config with distinct (mostly prime) sizes, so a transposed axis fails loudly.

        Vision: 3 blocks (block 1 full attention), hidden 36 = 3 heads x 12 (the 2-D rotary
        needs head_dim % 4 == 0), MLP 52, window 56 (2x2 merge units); text: 2 layers, hidden 48,
        6 heads / 2 kv heads of 8, MLP 70, vocabulary 211. `vision` and `text_overrides`
        replace fields of the vision and text configs.
        """
        text = dict(
            vocab_size=211,
            hidden_size=48,
            intermediate_size=70,
            num_layers=2,
            num_heads=6,
            num_kv_heads=2,
            head_dim=8,
            mrope_section=(1, 1, 2),
            max_position_embeddings=4096,
        )
        text.update(text_overrides)
        vis = dict(
            depth=3,
            hidden_size=36,
            intermediate_size=52,
            num_heads=3,
            window_size=56,
            fullatt_block_indexes=(1,),
            out_hidden_size=text["hidden_size"],
        )
        vis.update(vision or {})
        return cls(
            vision=VisionConfig(**vis),
            text=TextConfig(**text),
            image_token_id=201,
            video_token_id=202,
            vision_start_token_id=203,
            vision_end_token_id=204,
            bos_token_id=205,
            eos_token_id=206,
        )

    @classmethod
    def preset(cls, name: str, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
        """The preset `name` (one of `PRESETS`) with the fields in `overrides` replaced: a nested
        dict as a config file's `model.overrides`, e.g. `{"text": {"num_layers": 4},
        "position_after_video": "max"}`. An unknown preset or key is an error naming it."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return replace_from_plain(PRESETS[name](), overrides or {}, where="model.overrides")

    # ---- Hugging Face config.json <-> ModelConfig ---------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The released *flat* config.json layout (what the original checkpoints ship)."""
        v, t = self.vision, self.text
        out = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "hidden_act": "silu",
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "num_attention_heads": t.num_heads,
            "num_hidden_layers": t.num_layers,
            "num_key_value_heads": t.num_kv_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "tie_word_embeddings": t.tie_word_embeddings,
            "use_sliding_window": False,
            "vocab_size": t.vocab_size,
            "vision_config": {
                "depth": v.depth,
                "hidden_act": "silu",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_chans": v.in_channels,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "tokens_per_second": v.tokens_per_second,
            },
        }
        if self.position_after_video != "spatial":
            out["position_after_video"] = self.position_after_video
        return out


PRESETS = {
    "tiny": ModelConfig.tiny,
    "3b": ModelConfig.qwen25vl_3b,
    "7b": ModelConfig.qwen25vl_7b,
    "32b": ModelConfig.qwen25vl_32b,
    "72b": ModelConfig.qwen25vl_72b,
}


def _rope_dict(d: dict[str, Any]) -> dict[str, Any]:
    """`rope_parameters` (transformers 5) or `rope_scaling` (released) or {}."""
    return d.get("rope_parameters") or d.get("rope_scaling") or {}


def config_from_hf_dict(d: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
    """Builds a `ModelConfig` from either config.json layout.

    Reads the released flat layout (text fields at top level, `rope_scaling.mrope_section`) and
    the nested transformers-5 layout (`text_config`, `rope_parameters`).
    """
    if d.get("model_type") not in (None, "qwen2_5_vl"):
        raise ValueError(f"{source}: model_type {d.get('model_type')!r} is not 'qwen2_5_vl'")
    text = dict(d)
    if isinstance(d.get("text_config"), dict):
        text = {**d, **d["text_config"]}
    vis = d.get("vision_config")
    if not isinstance(vis, dict):
        raise ValueError(f"{source}: missing 'vision_config'")
    try:
        rope = _rope_dict(text)
        section = tuple(rope.get("mrope_section", (16, 24, 24)))
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        tie = bool(d.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
        text_cfg = TextConfig(
            vocab_size=int(text["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(text["intermediate_size"]),
            num_layers=int(text["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=hidden // heads,
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 1000000.0))),
            mrope_section=section,
            max_position_embeddings=int(text.get("max_position_embeddings", 128000)),
            tie_word_embeddings=tie,
        )
        vrope = _rope_dict(vis)
        vision_cfg = VisionConfig(
            depth=int(vis["depth"]),
            hidden_size=int(vis["hidden_size"]),
            intermediate_size=int(vis["intermediate_size"]),
            num_heads=int(vis["num_heads"]),
            in_channels=int(vis.get("in_channels", vis.get("in_chans", 3))),
            patch_size=int(vis.get("patch_size", 14)),
            temporal_patch_size=int(vis.get("temporal_patch_size", 2)),
            spatial_merge_size=int(vis.get("spatial_merge_size", 2)),
            window_size=int(vis.get("window_size", 112)),
            fullatt_block_indexes=tuple(int(i) for i in vis.get("fullatt_block_indexes", ())),
            out_hidden_size=int(vis.get("out_hidden_size", hidden)),
            tokens_per_second=int(vis.get("tokens_per_second", 2)),
            rope_theta=float(vrope.get("rope_theta", 10000.0)),
        )
        if vis.get("hidden_act", "silu") != "silu" or text.get("hidden_act", "silu") != "silu":
            raise ValueError("only hidden_act 'silu' is supported")
        ids = {k: int(text[k]) for k in TOKEN_ID_FIELDS if isinstance(text.get(k), int)}
        after_video = str(d.get("position_after_video", "spatial"))
        return ModelConfig(
            vision=vision_cfg, text=text_cfg, position_after_video=after_video, **ids
        )
    except KeyError as e:
        raise ValueError(f"{source}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


def from_hf_config(path: str | os.PathLike) -> ModelConfig:
    """Reads a checkpoint's `config.json` (a file, or a directory holding one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return config_from_hf_dict(d, source=path)
