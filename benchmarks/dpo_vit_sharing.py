"""Figure for BUILD_NOTES.md: what running the ViT and merger once per DPO pair saves (issue 15),
from the analytic FLOPs of `model/cost.forward_flops`, at a 1344 x 1344 image.

A pair is one prompt (the image + `--prompt_text` tokens) and two replies of `--reply` tokens.
The report's DPO freezes the ViT and trains the merger and LLM, so one policy step costs ViT x1
(forward), merger x3 (forward + backward), LLM x3; the reference (a frozen copy, or the
precomputed pass) costs one forward of each. Running the vision tower per sequence (TRL, Tunix,
EasyDeL) pays the ViT and merger twice in both.

Usage: python benchmarks/dpo_vit_sharing.py
"""

from __future__ import annotations

import argparse

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.vision import smart_resize
from qwen25vl_jax.model.cost import forward_flops


def pair_flops(cfg: ModelConfig, side: int, prompt_text: int, reply: int) -> dict[str, float]:
    """FLOPs of one pair in a DPO step (policy step + reference forward), vision per pair vs
    vision per sequence."""
    v = cfg.vision
    h, w = smart_resize(side, side, factor=v.patch_size * v.spatial_merge_size)
    patches = (h // v.patch_size) * (w // v.patch_size)
    seq = patches // v.merge_unit + prompt_text + reply  # one reply's sequence
    vision = forward_flops(cfg, patches=patches, frames_sq=patches**2, tokens=0, samples_sq=0)
    llm = forward_flops(cfg, patches=0, frames_sq=0, tokens=2 * seq, samples_sq=2 * seq**2)
    once = (1 + 1) * vision["vit"] + (3 + 1) * vision["merger"]  # policy + reference
    text = (3 + 1) * llm["llm"]
    return {"patches": patches, "tokens": 2 * seq, "vision_once": once, "llm": text,
            "shared": once + text, "per_sequence": 2 * once + text}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1344)
    parser.add_argument("--prompt_text", type=int, default=64)
    parser.add_argument("--reply", type=int, default=256)
    a = parser.parse_args()
    print(f"DPO pair: {a.side}x{a.side} image, {a.prompt_text} prompt text tokens, two replies "
          f"of {a.reply} tokens (policy step + reference forward)")  # fmt: skip
    print("| model | patches | vision once per pair | saved (2nd vision pass) | pair total, "
          "shared | per sequence | saving |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("3b", "7b", "72b"):
        f = pair_flops(ModelConfig.preset(name), a.side, a.prompt_text, a.reply)
        saved = f["per_sequence"] - f["shared"]
        tf = {k: f"{f[k] / 1e12:.2f} TFLOP" for k in ("vision_once", "shared", "per_sequence")}
        share = saved / f["per_sequence"]
        print(f"| {name} | {f['patches']} | {tf['vision_once']} | {saved / 1e12:.2f} TFLOP | "
              f"{tf['shared']} | {tf['per_sequence']} | {share:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
