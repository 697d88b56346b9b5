"""Pre-training stage 3: long context (sequence length 32768), all parameters, remat.

Mesh and remat from the memory plan (BUILD_NOTES "Memory plan", `benchmarks/memory_plan.py`:
the step compiled for N fake devices, one packed row of 32768 tokens and 65536 ViT slots per
batch shard, GB per device). 72B: on 256 devices fsdp 64 x context 4 with remat "full" fits
both budgets (73 GB); on 64 devices no mesh tried fits (the `context` axis does not shard the
weights and Adam moments, so fsdp 16 x context 4 holds 55 GB of them); on 8 devices never
(float32 weights + Adam alone: 110 GB). 7B: fits both budgets with every device on fsdp from
64 devices (74 GB), and context 4 only lowers activations. Hence: remat "full", context 4, fsdp
the devices left (tensor 1: tensor sharding barely lowers 72B's activations at 32k, 175 GB at
fsdp 16 x tensor 4), a global batch of 64 rows = one row per (data x fsdp) shard on 256 devices.
"""

from experiments.configs import base


def get_config(size: str = "tiny"):
    c = base.get_config(size)
    c.optim.lr = 1e-5 if size != "tiny" else 1e-3
    c.run.remat = "full"
    if size != "tiny":
        c.data.seq_len = 32768
        c.data.num_slots = 64 * 1024
        c.train.batch_size = 64
        # one 32k row's activations do not fit one chip: split each row over 4 devices
        # (decoder tokens and ViT slots; ring attention). fsdp takes the devices left over.
        c.mesh.context = 4
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    else:
        c.data.seq_len = 256
    return c
