"""A deterministic synthetic data source: packed batches of random samples (images, videos and
text), each example seeded by its global index, so that processes and resumed runs see exactly
the data an uninterrupted single process would. For tests and benchmarks."""

from __future__ import annotations

import numpy as np

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.assemble import assemble
from qwen25vl_jax.data.media import Media
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.data.sample import Sample, make_sample
from qwen25vl_jax.model.inputs import Batch

GRIDS = ((1, 4, 4), (1, 6, 10), (1, 8, 6), (2, 4, 6))


def random_sample(
    cfg: ModelConfig, rng: np.random.Generator, max_tokens: int, vocab: int
) -> Sample:
    """A user turn with 0-2 media and a supervised reply of random tokens below `vocab`."""
    ids, media = [], []
    for _ in range(int(rng.integers(0, 3))):
        grid = GRIDS[int(rng.integers(len(GRIDS)))]
        video = grid[0] > 1
        ids += [cfg.vision_start_token_id]
        ids += [cfg.video_token_id if video else cfg.image_token_id] * (int(np.prod(grid)) // 4)
        ids += [cfg.vision_end_token_id]
        pix = rng.standard_normal((int(np.prod(grid)), cfg.vision.patch_dim)).astype(np.float32)
        media.append(Media("video" if video else "image", pix, grid, 1.0 if video else None))
    prompt = rng.integers(0, vocab, int(rng.integers(2, 6))).tolist()
    reply = rng.integers(0, vocab, int(rng.integers(4, max(5, max_tokens - len(ids) - 6)))).tolist()
    loss = [False] * (len(ids) + len(prompt)) + [True] * len(reply)
    return make_sample(cfg, np.asarray(ids + prompt + reply), np.asarray(loss), media)


class SyntheticBatches:
    """Iterator of host-local `Batch`es: this process's `batch_size / process_count` rows of
    global batch `step`. State: {"step": int}."""

    def __init__(
        self,
        cfg: ModelConfig,
        bucket: Bucket,
        *,
        batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        vocab: int | None = None,
        repeat: int | None = None,
    ):
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
        self.cfg, self.bucket, self.seed = cfg, bucket, seed
        self.local = batch_size // process_count
        self.first_row = process_index * self.local
        self.vocab = min(
            vocab or cfg.text.vocab_size, cfg.image_token_id, cfg.vision_start_token_id
        )
        self.repeat = repeat  # cycle over this many distinct batches (to overfit)
        self.step = 0

    def example(self, index: int) -> list[Sample]:
        """The two samples packed into the row of global index `index`."""
        rng = np.random.default_rng([self.seed, index])
        budget = self.bucket.seq_len // 2
        return [random_sample(self.cfg, rng, budget, self.vocab) for _ in range(2)]

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        step = self.step if self.repeat is None else self.step % self.repeat
        rows = range(self.first_row, self.first_row + self.local)
        batch = assemble(
            [self.example(step * 10_000 + r) for r in rows],
            self.cfg,
            seq_len=self.bucket.seq_len,
            num_slots=self.bucket.num_slots,
        )
        self.step += 1
        return batch

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
