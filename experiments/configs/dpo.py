"""DPO after SFT (the report's post-training): ViT frozen (the report's setting; with it frozen
the ViT runs forward only, once per pair), merger and LLM trained on preference pairs against
the initial weights as reference.

  python -m experiments.train --config=experiments/configs/dpo.py:7b --workdir=/ckpt/dpo \\
      --config.model.init_checkpoint=/ckpt/sft --config.data.paths=/data/pref/*.jsonl \\
      --config.data.media_root=/data/pref --config.dpo.reference=precomputed

Records: `qwen25vl_jax/data/preference.py` (LLaMA-Factory / TRL / ShareGPT pairs). A row of
seq_len tokens holds up to `dpo.pairs_per_row` pairs (both replies + the prompt twice); the
batch size counts rows.
"""

from experiments.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config(size)
    c.train.objective = "dpo"
    c.optim.train_vit = False
    c.optim.lr = 5e-7 if size != "tiny" else 1e-3  # DPO's usual 5e-7 (TRL, LLaMA-Factory)
    c.optim.warmup_steps = 100 if size != "tiny" else 0
    c.dpo.beta = 0.1
    c.dpo.loss_type = "sigmoid"
    c.dpo.label_smoothing = 0.0
    c.dpo.reference = "weights"
    c.dpo.pairs_per_row = 2 if size == "tiny" else 4
    return c
