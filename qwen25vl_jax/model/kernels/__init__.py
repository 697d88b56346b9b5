"""Attention kernels behind `model.attention`'s backend switch (imported lazily)."""
