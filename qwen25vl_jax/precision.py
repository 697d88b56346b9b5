"""Float32 matmul precision of the command-line tools.

On CPUs JAX multiplies float32 matrices in float32. On GPUs and TPUs its default precision for
float32 matmuls is lower (TF32 / bfloat16 passes): on an H200, scoring a model against
transformers' float32 logits gave max |dlogits| 1.6e-2 - 3.2e-2 at the default and <= 3.4e-5 at
"highest". So the tools that claim float32 parity (score, generate, eval) default to "highest";
training computes in bfloat16 by default and keeps JAX's "default" (see BUILD_NOTES §5).
"""

from __future__ import annotations

PRECISIONS = ("highest", "high", "default")


def set_matmul_precision(name: str) -> None:
    """Sets ``jax_default_matmul_precision`` (one of `PRECISIONS`) for the whole process."""
    import jax

    if name not in PRECISIONS:
        raise ValueError(f"matmul precision {name!r}: expected one of {PRECISIONS}")
    jax.config.update("jax_default_matmul_precision", name)


def define_precision_flag(default: str) -> None:
    """Defines --matmul_precision (absl) with ``default``."""
    from absl import flags

    flags.DEFINE_enum(
        "matmul_precision",
        default,
        list(PRECISIONS),
        "float32 matmul precision on GPU/TPU (CPUs always compute float32 exactly): 'highest' "
        "= full float32, 'high' = 3-pass bfloat16 / TF32x3, 'default' = the platform's fastest",
    )
