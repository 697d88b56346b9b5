"""Base training config. `--config=experiments/configs/<stage>.py:<size>`, size one of
tiny | 3b | 7b | 32b | 72b; override any field with `--config.<path>=value`.

Sections built from the library's dataclasses hold their defaults (`section`), so a default
lives in one place and `experiments.train` reads each section back strictly (an unknown key is
an error naming it):
  model  preset (`config.PRESETS`) + overrides (a nested dict of ModelConfig fields, e.g.
         {"text": {"num_layers": 4}}, set in a config file; the command line can change the
         keys the file sets, e.g. --config.model.overrides.text.vocab_size=N for the demo), or
         init_checkpoint (Orbax) / init_hf_dir (safetensors), whose config.json gives the
         architecture; init_seed draws the random weights (default: train.seed)
  optim  `OptimConfig`      run   `RunOptions` (compute dtype, attention backend, remat)
  step   `StepConfig` (gradient accumulation, loss chunk)
  dpo    `DPOConfig` (beta, loss type, reference mode, pairs per row) when train.objective=dpo
  data   the input pipeline plus `RecordOptions` (pixel budgets, video sampling, grounding)
  train, mesh   the loop and the device mesh
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections

from qwen25vl_jax.data.records import RecordOptions
from qwen25vl_jax.dataclass_dict import as_plain, from_plain
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.train.dpo import DPOConfig
from qwen25vl_jax.train.optimizer import OptimConfig
from qwen25vl_jax.train.trainer import StepConfig

# per-size choices: (global batch, seq_len, ViT slots per example, mesh fsdp, mesh tensor)
SIZES = {
    "tiny": (4, 128, 16 * 48, 1, 1),
    "3b": (256, 8192, 64 * 256, -1, 1),
    "7b": (256, 8192, 64 * 256, -1, 1),
    "32b": (256, 8192, 64 * 256, -1, 4),
    "72b": (256, 8192, 64 * 256, -1, 8),
}


def section(obj) -> ml_collections.ConfigDict:
    """A config section holding the fields of dataclass `obj`. A field whose value is None gets
    a typed placeholder, so `--config.optim.vit_lr=1e-4` parses as its type."""
    hints = typing.get_type_hints(type(obj))
    values = {}
    for name, value in as_plain(obj).items():
        if value is None:
            types = [t for t in typing.get_args(hints[name]) if t is not type(None)]
            value = ml_collections.FieldReference(None, field_type=types[0])
        values[name] = value
    return ml_collections.ConfigDict(values)


def get_config(size: str = "tiny") -> ml_collections.ConfigDict:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    batch, seq_len, slots, fsdp, tensor = SIZES[size]
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict(
        {
            "steps": 10000,
            "batch_size": batch,
            "seed": 0,
            "log_every": 10,
            "save_every": 500,
            "keep": 3,
            "async_save": True,
            # what a step minimises: "next_token" (pre-training, SFT) or "dpo" (preference
            # pairs; the `dpo` section)
            "objective": "next_token",
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "preset": size,
            "overrides": ml_collections.ConfigDict(),
            "init_checkpoint": "",
            "init_hf_dir": "",
            "init_seed": c.train.get_ref("seed"),  # follows train.seed unless set
        }
    )
    c.optim = section(OptimConfig())
    c.run = section(RunOptions(dtype="bfloat16", remat="none" if size == "tiny" else "full"))
    c.step = section(StepConfig())
    c.dpo = section(DPOConfig())
    # -1: the devices the other axes leave (tiny: all on data; real sizes: all on fsdp)
    # context: devices that split each sequence (stage 3's long rows; 1 = no split)
    c.mesh = ml_collections.ConfigDict(
        {"data": -1 if fsdp != -1 else 1, "fsdp": fsdp, "context": 1, "tensor": tensor}
    )
    c.data = ml_collections.ConfigDict(
        {
            # records (JSONL / ArrayRecord files in `paths`) | synthetic (random tokens: only
            # when asked for, so a forgotten `paths` is an error, not a run on noise)
            "source": "records",
            "paths": "",
            # a curriculum: the first `curriculum_steps` steps read `curriculum_paths` (records,
            # like `paths`), the rest `paths`; 0: no curriculum
            "curriculum_paths": "",
            "curriculum_steps": 0,
            "seq_len": seq_len,
            "num_slots": slots,
            "synthetic_repeat": ml_collections.FieldReference(None, field_type=int),
            "workers": 0,
            # MiB of preprocessed samples each preprocessing process keeps for later epochs
            "sample_cache_mb": 0,
            "oversize": "truncate",
            "bad_records": "skip",
            # skipped records: this many in a row stop training; a warning above this fraction
            "max_consecutive_bad": 1000,
            "warn_skipped_fraction": 0.01,
            "tokenizer_dir": "",
            **as_plain(RecordOptions()),
        }
    )
    return c


def check_keys(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first section or key of `c` that the base config lacks (a
    misspelt or stale key a config file added). `model.overrides` is checked against
    `ModelConfig` when the model is built."""
    known = get_config()
    for name in c:
        if name not in known:
            raise ValueError(f"unknown config key {name}; sections: {', '.join(known)}")
        if unknown := sorted(set(c[name]) - set(known[name])):
            keys = ", ".join(f"{name}.{k}" for k in unknown)
            raise ValueError(f"unknown config key {keys}; {name} has {', '.join(known[name])}")


def record_options(data: ml_collections.ConfigDict) -> RecordOptions:
    """The `RecordOptions` of a config's `data` section (training, evaluation and the demo
    decode records alike)."""
    names = {f.name for f in dataclasses.fields(RecordOptions)}
    return from_plain(RecordOptions, {k: v for k, v in data.items() if k in names}, where="data")
