"""Base training config. `--config=experiments/configs/<stage>.py:<size>`, size one of
tiny | 3b | 7b | 32b | 72b; override any field with `--config.<path>=value`."""

from __future__ import annotations

import ml_collections

# per-size defaults: (global batch, seq_len, ViT slots per example, mesh fsdp, mesh tensor)
SIZES = {
    "tiny": (4, 128, 16 * 48, 1, 1),
    "3b": (256, 8192, 64 * 256, -1, 1),
    "7b": (256, 8192, 64 * 256, -1, 1),
    "32b": (256, 8192, 64 * 256, -1, 4),
    "72b": (256, 8192, 64 * 256, -1, 8),
}


def get_config(size: str = "tiny") -> ml_collections.ConfigDict:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    batch, seq_len, slots, fsdp, tensor = SIZES[size]
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"preset": size, "init_hf_dir": "", "init_checkpoint": ""})
    c.optim = ml_collections.ConfigDict({
        "lr": 1e-5, "warmup_steps": 100, "total_steps": 10000, "end_lr_ratio": 0.0, "b1": 0.9,
        "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "grad_clip": 1.0,
        "vit_lr": ml_collections.FieldReference(None, field_type=float),
        "merger_lr": ml_collections.FieldReference(None, field_type=float),
        "llm_lr": ml_collections.FieldReference(None, field_type=float),
        "train_vit": True, "train_merger": True, "train_llm": True,
    })  # fmt: skip
    c.step = ml_collections.ConfigDict({
        "dtype": "bfloat16", "remat": "none" if size == "tiny" else "full", "backend": "xla",
        "accum_steps": 1, "loss_chunk": 1024,
    })  # fmt: skip
    c.train = ml_collections.ConfigDict({
        "steps": 10000, "batch_size": batch, "seed": 0, "log_every": 10, "save_every": 500,
        "keep": 3, "async_save": True,
    })  # fmt: skip
    # -1: the devices the other axes leave (tiny: all on data; real sizes: all on fsdp)
    c.mesh = ml_collections.ConfigDict(
        {"data": -1 if fsdp != -1 else 1, "fsdp": fsdp, "tensor": tensor}
    )
    c.data = ml_collections.ConfigDict({
        "source": "synthetic",  # synthetic | records (JSONL / ArrayRecord files in `paths`)
        "paths": "", "media_root": "", "seq_len": seq_len, "num_slots": slots,
        "synthetic_repeat": ml_collections.FieldReference(None, field_type=int),
        "workers": 0, "min_pixels": 3136, "max_pixels": 12845056, "fps": 2.0,
        "video_min_pixels": 100352, "video_max_pixels": 602112,
        "oversize": "truncate", "bad_records": "skip", "tokenizer_dir": "",
        "ground_coords": "original",
        "default_system": True,  # the template's "You are a helpful assistant." turn
    })  # fmt: skip
    return c


def record_options(d):
    """The `RecordOptions` of a config's `data` section (training, evaluation and the demo
    decode records alike)."""
    from qwen25vl_jax.data.records import RecordOptions

    return RecordOptions(
        media_root=d.media_root, ground_coords=d.ground_coords, min_pixels=d.min_pixels,
        max_pixels=d.max_pixels, video_fps=d.fps, video_min_pixels=d.video_min_pixels,
        video_max_pixels=d.video_max_pixels, default_system=d.default_system,
    )  # fmt: skip
