"""`StagedBatches`: stages in order, one reader at a time, and a resume anywhere (a stage's
boundary included) that continues exactly as the unbroken run."""

from __future__ import annotations

import pytest

from qwen25vl_jax.data.curriculum import StagedBatches


class Counter:
    """Yields name0, name1, ...; state {"i": next index}; records its life in `log`."""

    def __init__(self, name: str, log: list):
        self.name, self.i, self.log = name, 0, log
        self.counts = {"name": name}
        log.append(f"open {name}")

    def __next__(self):
        self.i += 1
        return f"{self.name}{self.i - 1}"

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]

    def close(self):
        self.log.append(f"close {self.name}")


def staged(log: list, sizes=(3, 2)) -> StagedBatches:
    stages = [(n, lambda name=name: Counter(name, log)) for n, name in zip(sizes, "ab")]
    return StagedBatches([*stages, (None, lambda: Counter("c", log))])


def take(it, n: int) -> list[str]:
    return [next(it) for _ in range(n)]


def test_stages_run_in_order_one_reader_at_a_time():
    log = []
    it = staged(log)
    assert log == ["open a"]  # the first stage at once: bad data fails before training
    assert take(it, 7) == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]
    assert log == ["open a", "close a", "open b", "close b", "open c"]
    assert it.counts == {"name": "c"}
    it.close()
    assert log[-1] == "close c"


@pytest.mark.parametrize("stop", range(8))
def test_resume_after_any_batch_equals_the_unbroken_run(stop):
    unbroken = take(staged([]), 9)
    first = staged([])
    head = take(first, stop)
    state = first.get_state()
    log = []
    resumed = staged(log)
    resumed.set_state(state)
    assert head + take(resumed, 9 - stop) == unbroken
    # no reader of a finished stage is opened again beyond the one built up front
    assert log.count("open a") == 1 and log.count("open b") <= 1


def test_bad_stages_and_states_are_refused():
    with pytest.raises(ValueError, match="last stage"):
        StagedBatches([(3, lambda: Counter("a", []))])
    with pytest.raises(ValueError, match="batches > 0"):
        StagedBatches([(0, lambda: Counter("a", [])), (None, lambda: Counter("b", []))])
    with pytest.raises(ValueError, match="stage 5"):
        staged([]).set_state({"batches": 1, "stage": 5, "state": {"i": 1}})
