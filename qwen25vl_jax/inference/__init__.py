"""Generation: a static KV cache, sampling, batched prefill + compiled decode, grounding."""

from qwen25vl_jax.inference.generate import DecodeState, GenerateOutput, Generator
from qwen25vl_jax.inference.grounding import (
    Detection,
    Grounding,
    clip_to_image,
    draw_detections,
    ground,
    map_to_original,
    parse_grounding,
)
from qwen25vl_jax.inference.kv_cache import KVCache, init_cache
from qwen25vl_jax.inference.prompt_batch import PreparedBatch, prepare_batch
from qwen25vl_jax.inference.sampling import Sampling, sample, warp_logits

__all__ = [
    "DecodeState",
    "Detection",
    "GenerateOutput",
    "Generator",
    "Grounding",
    "KVCache",
    "PreparedBatch",
    "Sampling",
    "clip_to_image",
    "draw_detections",
    "ground",
    "init_cache",
    "map_to_original",
    "parse_grounding",
    "prepare_batch",
    "sample",
    "warp_logits",
]
