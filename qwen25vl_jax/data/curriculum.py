"""Training batches in stages: the first steps read one set of records, the later steps another.

A curriculum gives a skill that the full mix learns late, or on some seeds not at all, a head
start: e.g. the main job's first steps on its timing records alone, then all of them
(`data.curriculum_paths` and `data.curriculum_steps` of the training config; tried for the
demo and not adopted, BUILD_NOTES §6 "A timing-first curriculum").
One batch is one step, so a stage ends after its number of batches; the last stage runs on.

The first stage's iterator is built at once (bad data fails before training starts), each
later one when its first batch is asked for, and the one before it closed then: their
preprocessing workers never run side by side. State (JSON-able, saved with
each checkpoint): {"batches": batches read so far, "stage": the stage that read the last one,
"state": that stage's iterator state}. A restored run whose next batch belongs to a later stage
starts that stage afresh, exactly as an unbroken run would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


class StagedBatches:
    """Iterates `stages`: (batches, make_iterator) pairs, the last one's batches None (no end).

    make_iterator() returns an iterator of batches with get_state() / set_state(dict) and,
    optionally, close() and a `counts` dict (the records pipeline's counters)."""

    def __init__(self, stages: Sequence[tuple[int | None, Callable[[], Iterator]]]):
        if not stages or stages[-1][0] is not None:
            raise ValueError("the last stage must run on (batches None)")
        if any(n is None or n <= 0 for n, _ in stages[:-1]):
            raise ValueError(f"every stage but the last needs batches > 0, got {stages}")
        self._stages = list(stages)
        self._batches = 0  # read so far
        self._stage, self._it = 0, None  # `_it`: the iterator of stage `_stage`, or None
        self._enter(0)

    def _stage_of(self, batch: int) -> int:
        """The stage that reads batch number `batch` (0-based)."""
        end = 0
        for i, (n, _) in enumerate(self._stages[:-1]):
            end += n
            if batch < end:
                return i
        return len(self._stages) - 1

    def _enter(self, stage: int) -> None:
        self.close()
        self._stage, self._it = stage, self._stages[stage][1]()

    def __iter__(self):
        return self

    def __next__(self):
        stage = self._stage_of(self._batches)
        if self._it is None or stage != self._stage:
            self._enter(stage)
        batch = next(self._it)
        self._batches += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        state = None if self._it is None else self._it.get_state()
        return {"batches": self._batches, "stage": self._stage, "state": state}

    def set_state(self, state: dict[str, Any]) -> None:
        batches, stage = int(state["batches"]), int(state["stage"])
        if not 0 <= stage < len(self._stages):
            raise ValueError(f"data state names stage {stage} of {len(self._stages)}")
        self._batches = batches
        # the recorded stage's reader resumes where it stopped (the open one if it is that
        # stage's); when the next batch belongs to a later stage, __next__ starts that one
        if state["state"] is not None and self._stage_of(batches) == stage:
            if self._it is None or self._stage != stage:
                self._enter(stage)
            self._it.set_state(state["state"])
        else:
            self.close()
            self._stage = stage

    @property
    def counts(self) -> dict[str, Any]:
        """The current stage's counters (each stage counts from zero; empty after a restore
        into a stage not yet started, until its first batch)."""
        return getattr(self._it, "counts", {}) if self._it is not None else {}

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None
