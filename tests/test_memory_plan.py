"""benchmarks/memory_plan.py's core on the tiny model: the real training step compiled (not run)
on 8 fake CPU devices in a subprocess; per-device bytes positive and shrinking as fsdp grows."""

import json

from tests.fake_devices import result_lines

SCRIPT = """
import json
from benchmarks.memory_plan import Setup, measure
# the tiny preset with widths 8 divides (its own are prime: fsdp would leave them whole)
wide = {"text": {"hidden_size": 64, "intermediate_size": 128},
        "vision": {"hidden_size": 64, "num_heads": 4, "intermediate_size": 128,
                   "out_hidden_size": 64}}
out = {}
for fsdp in (2, 8):
    mesh = (("data", 8 // fsdp), ("fsdp", fsdp), ("tensor", 1))
    r = measure(Setup("tiny", 64, 64, mesh, "full", backend="xla", overrides=wide))
    out[fsdp] = {k: v for k, v in r.items() if k != "method"}
print("RESULT " + json.dumps(out))
"""


def test_memory_plan_tiny_on_eight_fake_devices():
    (line,) = result_lines(SCRIPT)
    r = {int(k): v for k, v in json.loads(line).items()}
    for fsdp in (2, 8):
        for key in ("params", "opt_state", "grads", "batch", "temp", "peak"):
            assert r[fsdp][key] > 0, (fsdp, key, r[fsdp])
        assert r[fsdp]["opt_state"] >= r[fsdp]["params"]  # two Adam moments per weight
        assert r[fsdp]["peak"] >= r[fsdp]["params"] + r[fsdp]["opt_state"] + r[fsdp]["temp"]
    # the batch is one row per shard either way; weights, moments and gradients are split
    # four times more ways (biases, norms and the merger's first matrix are not: here ~1/2)
    for key in ("params", "opt_state", "grads"):
        assert r[8][key] < 0.6 * r[2][key], (key, r[2][key], r[8][key])
    assert r[8]["peak"] < r[2]["peak"]
