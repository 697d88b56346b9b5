"""Training: optimizer with per-module rates and freezing, losses, the sharded step, metrics."""
