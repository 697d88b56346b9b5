"""GRPO with verifiable rewards (`experiments/rl.py`):
`--config=experiments/configs/grpo.py:<size>`, size one of tiny | 3b | 7b | 32b | 72b, or demo
(the main job's tiny model and data options).

The sections of `base` (model: start from `model.init_checkpoint` / `init_hf_dir`, an SFT
checkpoint; optim, run, step, mesh, train; data: `paths` are RL prompt records,
`qwen25vl_jax/data/rl_prompts.py`, decoded with the same record options as SFT) plus `rl`:
the sampler and batching (`RolloutConfig`: group_size, max_new_tokens, temperature, top_p,
top_k, prompt_len, seq_len, num_slots, scale_advantages, dynamic_sampling, num_updates, rewards
{name: weight}), the objective (eps_low, eps_high, kl_coef: `GRPOLoss`) and prompts_per_step.
One training step = one sampled batch of prompts_per_step x group_size completions (x
num_updates optimizer steps). The ViT is frozen, as in the report's post-training.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import base
from qwen25vl_jax.dataclass_dict import as_plain
from qwen25vl_jax.train.grpo import GRPOLoss
from qwen25vl_jax.train.rollout import RolloutConfig

# per-size (prompts per step, group size, max new tokens, prompt bucket, row length)
SIZES = {
    "tiny": (4, 8, 32, 128, 192),
    "3b": (64, 8, 1024, 2048, 3072),
    "7b": (64, 8, 1024, 2048, 3072),
    "32b": (64, 8, 1024, 2048, 3072),
    "72b": (64, 8, 1024, 2048, 3072),
}
LOSS_KEYS = ("eps_low", "eps_high", "kl_coef")


def rl_section(prompts: int, group: int, new: int, prompt_len: int, seq_len: int, slots: int):
    default = GRPOLoss()
    rollout = RolloutConfig(
        group_size=group,
        max_new_tokens=new,
        prompt_len=prompt_len,
        seq_len=seq_len,
        num_slots=slots,
        rewards={"format": 0.2, "iou": 1.0, "count": 1.0, "time": 0.5, "answer": 1.0},
    )
    return ml_collections.ConfigDict(
        {
            **as_plain(rollout),
            **{k: getattr(default, k) for k in LOSS_KEYS},
            "prompts_per_step": prompts,
        }
    )


def get_config(size: str = "tiny") -> ml_collections.ConfigDict:
    if size == "demo":
        from experiments.configs import demo

        c = demo.get_config()
        c.model.overrides = ml_collections.ConfigDict()  # the SFT checkpoint's config.json
        # the demo's prompts hold at most 58 tokens and 192 ViT slots; answers ~30 tokens
        c.rl = rl_section(8, 8, 40, 64, 104, 192)
        c.rl.rewards.iou_hit = 0.5
        # from the 5-layer demo's SFT model (grounding acc 0.81), 2e-4 fell to 0.58 and 5e-5 to
        # 0.77; 2e-5 held it (BUILD_NOTES §6, "GRPO and DPO from the 5-layer SFT model")
        c.optim.lr = 2e-5
        c.optim.warmup_steps = 0
        c.optim.end_lr_ratio = 1.0
        c.train.steps = c.optim.total_steps = 70
        c.train.save_every = 35
        c.train.log_every = 1
    else:
        c = base.get_config(size)
        c.rl = rl_section(*SIZES[size], base.SIZES[size][2])
        c.optim.lr = 1e-6 if size != "tiny" else 1e-4
        c.optim.warmup_steps = 0
        c.train.steps = c.optim.total_steps = 500
        c.train.log_every = 1
    c.optim.train_vit = False
    c.data.bad_records = "skip"
    return c
