"""Pre-training stage 2: all parameters, multimodal data, sequence length 8192."""

from experiments.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config(size)
    c.optim.lr = 2e-5 if size != "tiny" else 1e-3
    c.optim.vit_lr = 2e-6 if size != "tiny" else 1e-4  # the ViT moves slower, as in ms-swift
    return c
