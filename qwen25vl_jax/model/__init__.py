"""Model components; see `qwen25vl_jax.model.qwen25vl.Qwen25VL` for the whole model."""
