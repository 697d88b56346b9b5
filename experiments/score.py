"""Scores processor-format inputs with a Qwen2.5-VL checkpoint: logits, 3-D positions, deltas.

The tool to check a converted model against PyTorch outputs on your own inputs:

  python -m experiments.score --hf_dir=DIR --inputs=in.npz --output=out.npz
  python -m experiments.score --checkpoint=ORBAX_DIR --inputs=in.npz --output=out.npz

in.npz holds the Hugging Face processor's arrays: input_ids [B,L], attention_mask [B,L], and
where present pixel_values [N,1176], image_grid_thw [n,3], pixel_values_videos [M,1176],
video_grid_thw [m,3], second_per_grid_ts [m]. out.npz gets logits float32 [B,L,V],
position_ids int [3,B,L] and rope_deltas int [B,1].
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from qwen25vl_jax.loading import load_model, read_processor_arrays
from qwen25vl_jax.model.inputs import inputs_from_hf
from qwen25vl_jax.model.qwen25vl import RunOptions, forward

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "hf_dir", None, "Hugging Face checkpoint directory (config.json + safetensors)."
)
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint directory (from checkpoints_convert).")
flags.DEFINE_string("inputs", None, "processor-format .npz")
flags.DEFINE_string("output", None, ".npz to write logits, position_ids, rope_deltas")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter and compute dtype")
flags.DEFINE_enum("backend", "xla", ["xla", "cudnn"], "attention backend")


def score(model, model_cfg, arrays: dict, opts: RunOptions = RunOptions()) -> dict[str, np.ndarray]:
    """logits float32 [B,L,V], position_ids int64 [3,B,L], rope_deltas int64 [B,1]."""
    media = {k: v for k, v in arrays.items() if k not in ("input_ids", "attention_mask")}
    inputs, deltas = inputs_from_hf(
        model_cfg, arrays["input_ids"], arrays.get("attention_mask"), **media
    )
    graphdef, state = nnx.split(model)
    logits = jax.jit(forward, static_argnums=3)(graphdef, state, inputs, opts)
    return {
        "logits": np.asarray(logits, np.float32),
        "position_ids": inputs.positions.astype(np.int64),
        "rope_deltas": deltas,
    }


def write_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    """Writes the .npz through a temporary file renamed at the end."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **outputs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv):
    del argv
    dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
    if (FLAGS.hf_dir is None) == (FLAGS.checkpoint is None):
        raise app.UsageError("give exactly one of --hf_dir and --checkpoint")
    model, model_cfg = load_model(checkpoint=FLAGS.checkpoint, hf_dir=FLAGS.hf_dir, dtype=dtype)
    arrays = read_processor_arrays(FLAGS.inputs)
    outputs = score(model, model_cfg, arrays, RunOptions(dtype, FLAGS.backend))
    write_outputs(FLAGS.output, outputs)
    b, length, v = outputs["logits"].shape
    print(f"wrote {FLAGS.output}: logits [{b}, {length}, {v}]")


if __name__ == "__main__":
    flags.mark_flags_as_required(["inputs", "output"])
    app.run(main)
