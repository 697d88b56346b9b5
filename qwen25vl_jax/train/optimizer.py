"""AdamW with warmup + cosine, global-norm clipping, per-module learning rates and freezing.

Parameters are grouped by module — `vit` (patch embedding and blocks), `merger`, `llm` (the
decoder) — as Qwen's `tune_mm_*` flags and ms-swift's `vit_lr` / `aligner_lr`. Frozen groups are
split off before differentiation: they get no gradient and carry no optimizer state. No weight
decay on norms, biases and (input and output) embeddings.
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import traverse_util

GROUPS = ("vit", "merger", "llm")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    warmup_steps: int = 100
    total_steps: int = 10000
    end_lr_ratio: float = 0.0  # cosine decays to lr * end_lr_ratio
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    vit_lr: float | None = None  # None: the base lr
    merger_lr: float | None = None
    llm_lr: float | None = None
    train_vit: bool = True
    train_merger: bool = True
    train_llm: bool = True

    def group_lr(self, group: str) -> float:
        lr = getattr(self, f"{group}_lr")
        return self.lr if lr is None else lr

    def trains(self, group: str) -> bool:
        return getattr(self, f"train_{group}")


def group_of(path: str) -> str:
    """'visual/merger/...' -> merger, 'visual/...' -> vit, 'decoder/...' -> llm."""
    if path.startswith("visual/merger/"):
        return "merger"
    if path.startswith("visual/"):
        return "vit"
    if path.startswith("decoder/"):
        return "llm"
    raise ValueError(f"parameter {path!r} belongs to no module group")


def decays(path: str) -> bool:
    """Weight decay applies to matrices, not to norms, biases or embeddings."""
    leaf = path.rsplit("/", 1)[-1]
    return not (
        "norm" in leaf or leaf == "ln_q" or leaf.endswith("bias") or leaf in ("embed", "lm_head")
    )


def flatten(params: dict) -> dict[str, jax.Array]:
    return traverse_util.flatten_dict(params, sep="/")


def unflatten(flat: dict[str, jax.Array]) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def split_trainable(params: dict, cfg: OptimConfig) -> tuple[dict, dict]:
    """(trainable, frozen) flat dicts {path: array}."""
    flat = flatten(params)
    trainable = {k: v for k, v in flat.items() if cfg.trains(group_of(k))}
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    if not trainable:
        raise ValueError("every module is frozen: nothing to train")
    return trainable, frozen


def schedule(cfg: OptimConfig, peak: float) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=max(cfg.warmup_steps, 1),
        decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1), end_value=peak * cfg.end_lr_ratio,
    )  # fmt: skip


def make_optimizer(
    cfg: OptimConfig, trainable: dict[str, jax.Array]
) -> optax.GradientTransformation:
    """The optimizer over the trainable flat dict: clip by the global norm of all trainable
    gradients, then one AdamW per module group (its own schedule and decay mask)."""
    labels = {k: group_of(k) for k in trainable}
    per_group = {
        g: optax.adamw(
            schedule(cfg, cfg.group_lr(g)), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=lambda tree: {k: decays(k) for k in tree},
        )
        for g in set(labels.values())
    }  # fmt: skip
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip), optax.multi_transform(per_group, labels)
    )
