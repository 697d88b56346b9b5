"""Supervised fine-tuning: ViT frozen, merger and LLM trained (Qwen's default SFT recipe)."""

from experiments.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config(size)
    c.optim.train_vit = False
    c.optim.lr = 1e-5 if size != "tiny" else 1e-3
    c.optim.warmup_steps = 100 if size != "tiny" else 2
    return c
