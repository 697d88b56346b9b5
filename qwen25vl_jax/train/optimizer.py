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


def split_trainable(flat: dict[str, jax.Array], optim: OptimConfig) -> tuple[dict, dict]:
    """{path: array} -> (trainable, frozen) {path: array} by the module groups `optim` trains."""
    trainable = {k: v for k, v in flat.items() if optim.trains(group_of(k))}
    frozen = {k: v for k, v in flat.items() if k not in trainable}
    if not trainable:
        raise ValueError("every module is frozen: nothing to train")
    return trainable, frozen


def schedule(optim: OptimConfig, peak: float) -> optax.Schedule:
    """Linear warmup to `peak`, then cosine decay to `peak * end_lr_ratio` at `total_steps`;
    warmup_steps 0: the peak from the first step (optax's warmup starts at 0)."""
    if optim.warmup_steps == 0:
        return optax.cosine_decay_schedule(peak, max(optim.total_steps, 1), optim.end_lr_ratio)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=max(optim.warmup_steps, 1),
        decay_steps=max(optim.total_steps, optim.warmup_steps + 1),
        end_value=peak * optim.end_lr_ratio,
    )


def make_optimizer(
    optim: OptimConfig, trainable: dict[str, jax.Array]
) -> optax.GradientTransformation:
    """The optimizer over the trainable {path: array}: clip by the global norm of all trainable
    gradients, then one AdamW per module group (its own schedule and decay mask)."""
    labels = {k: group_of(k) for k in trainable}
    per_group = {
        g: optax.adamw(
            schedule(optim, optim.group_lr(g)),
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=lambda tree: {k: decays(k) for k in tree},
        )
        for g in set(labels.values())
    }
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip), optax.multi_transform(per_group, labels)
    )
