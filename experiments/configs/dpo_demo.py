"""DPO on the demo's model from its SFT checkpoint, on pairs of its own samples
(`experiments/dpo_self_pairs.py`): the demo's data options (pixel budgets, no default system
turn), the architecture from the init checkpoint's config.json.

  python -m experiments.train --config=experiments/configs/dpo_demo.py --workdir=out/demo/dpo \\
      --config.model.init_checkpoint=out/demo/train/900 \\
      --config.data.paths=out/demo/dpo_pairs.jsonl --config.data.media_root=out/demo/data \\
      --config.data.tokenizer_dir=out/demo/tokenizer
"""

from __future__ import annotations

from experiments.configs import demo


def get_config(size: str = "tiny"):
    c = demo.get_config(size)
    c.model.overrides = {}  # the init checkpoint's config.json is the architecture
    c.train.objective = "dpo"
    c.optim.train_vit = False
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 5
    c.optim.total_steps = 120
    c.optim.end_lr_ratio = 0.1
    c.train.steps = 120
    c.train.batch_size = 8
    c.train.save_every = 60
    c.train.log_every = 10
    c.data.seq_len = 384  # two pairs of ~170 tokens per row
    c.data.num_slots = 384
    c.data.workers = 0
    c.dpo.beta = 0.1
    c.dpo.pairs_per_row = 2
    c.dpo.reference = "weights"
    return c
