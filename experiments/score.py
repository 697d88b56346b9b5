"""Scores processor-format inputs with a Qwen2.5-VL checkpoint: logits, 3-D positions, deltas.

The tool to check a converted model against PyTorch outputs on your own inputs:

  python -m experiments.score --hf_dir=DIR --inputs=in.npz --output=out.npz
  python -m experiments.score --checkpoint=ORBAX_DIR --inputs=in.npz --output=out.npz

in.npz holds the Hugging Face processor's arrays: input_ids [B,L], attention_mask [B,L], and
where present pixel_values [N,1176], image_grid_thw [n,3], pixel_values_videos [M,1176],
video_grid_thw [m,3], second_per_grid_ts [m]. out.npz gets logits float32 [B,L,V],
position_ids int [3,B,L] and rope_deltas int [B,1]. Inputs are checked against the model's
config before its weights load (`qwen25vl_jax.data.processor_inputs`); float32 matmuls run at
full precision unless --matmul_precision says otherwise (GPUs and TPUs default to less).
"""

from __future__ import annotations

import numpy as np
from absl import flags

from qwen25vl_jax.cli_errors import (
    InputError,
    check_output_file,
    input_errors,
    require_flags,
    run,
    write_npz,
)
from qwen25vl_jax.data.processor_inputs import check_processor_arrays
from qwen25vl_jax.loading import LOAD_ERRORS, load_model, read_model_config, read_processor_arrays
from qwen25vl_jax.model.attention import Backend
from qwen25vl_jax.precision import define_precision_flag, set_matmul_precision

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "hf_dir", None, "Hugging Face checkpoint directory (config.json + safetensors)."
)
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint directory (from checkpoints_convert).")
flags.DEFINE_string("inputs", None, "processor-format .npz")
flags.DEFINE_string("output", None, ".npz to write logits, position_ids, rope_deltas")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter and compute dtype")
flags.DEFINE_enum("backend", "xla", [b.value for b in Backend], "attention backend")
define_precision_flag("highest")


def score(model, model_cfg, arrays: dict, opts=None) -> dict[str, np.ndarray]:
    """logits float32 [B,L,V], position_ids int64 [3,B,L], rope_deltas int64 [B,1]; ``opts``: a
    `RunOptions` (default float32, xla attention)."""
    import jax  # imported here: bad inputs are reported before JAX loads
    from flax import nnx

    from qwen25vl_jax.data.hf_format import inputs_from_hf
    from qwen25vl_jax.model.qwen25vl import RunOptions, forward

    opts = RunOptions() if opts is None else opts
    inputs, deltas = inputs_from_hf(model_cfg, arrays)
    graphdef, state = nnx.split(model)
    logits = jax.jit(forward, static_argnums=3)(graphdef, state, inputs, opts)
    return {
        "logits": np.asarray(logits, np.float32),
        "position_ids": inputs.positions.astype(np.int64),
        "rope_deltas": deltas,
    }


def main(argv):
    del argv
    require_flags("inputs", "output")
    if bool(FLAGS.hf_dir) == bool(FLAGS.checkpoint):
        raise InputError("give exactly one of --hf_dir and --checkpoint")
    with input_errors(*LOAD_ERRORS):  # about the user's files: one line naming the file
        model_cfg = read_model_config(checkpoint=FLAGS.checkpoint, hf_dir=FLAGS.hf_dir)
        arrays = read_processor_arrays(FLAGS.inputs)
    check_processor_arrays(arrays, model_cfg, FLAGS.inputs)
    check_output_file(FLAGS.output)
    set_matmul_precision(FLAGS.matmul_precision)
    import jax.numpy as jnp

    from qwen25vl_jax.model.qwen25vl import RunOptions

    dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
    with input_errors(*LOAD_ERRORS):
        model, model_cfg = load_model(checkpoint=FLAGS.checkpoint, hf_dir=FLAGS.hf_dir, dtype=dtype)
    outputs = score(model, model_cfg, arrays, RunOptions(dtype, FLAGS.backend))
    write_npz(FLAGS.output, **outputs)
    b, length, v = outputs["logits"].shape
    print(f"wrote {FLAGS.output}: logits [{b}, {length}, {v}]")


if __name__ == "__main__":
    run(main, "score")
