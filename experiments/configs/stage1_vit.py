"""Pre-training stage 1 (report §2.2): train the ViT (and merger) with the LLM frozen."""

from experiments.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config(size)
    c.optim.train_llm = False
    c.optim.lr = 2e-4 if size != "tiny" else 1e-3
    return c
