"""Pre-training stage 3: long context (sequence length 32768), all parameters, remat."""

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
    else:
        c.data.seq_len = 256
    return c
