"""DPO from the command line on the tiny model, like SFT: `experiments/configs/dpo.py:tiny` from
an init checkpoint (the reference), metrics.jsonl, checkpoints, a resume. Two processes: 2
steps with the reference as a second weight tree, then resumed to step 3 with the reference
precomputed (a first pass over the run's batches). At step 1 the policy is the reference (loss
log 2, zero margin), and the precomputed pass scores batch 0 as the weight tree did; the ViT
stays bit-identical (frozen). The exact resume of the pair iterator: tests/test_dpo_data.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from qwen25vl_jax.checkpoint import load_checkpoint, save_params
from qwen25vl_jax.data.small_vocab import save_small_tokenizer
from qwen25vl_jax.model.qwen25vl import Qwen25VL
from tests.preference_cases import tokenizer_and_config, write_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo_run")
    data = write_data(d, copies=2)
    tok, cfg = tokenizer_and_config()
    save_small_tokenizer(tok, d / "tok")
    # drawn under jit: half the time of the op-by-op init
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Qwen25VL(cfg, rngs=nnx.Rngs(3)))))()
    ckpt = save_params(d / "init", init, cfg)
    return {"d": d, "data": data, "tok": str(d / "tok"), "init": str(ckpt)}


def train(files, workdir, *extra) -> list[dict]:
    """Runs experiments.train to the end in a subprocess; returns metrics.jsonl's lines."""
    cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/dpo.py:tiny",
           f"--workdir={workdir}", f"--config.model.init_checkpoint={files['init']}",
           f"--config.data.paths={files['data']}", f"--config.data.media_root={files['d']}",
           f"--config.data.tokenizer_dir={files['tok']}", "--config.data.default_system=False",
           "--config.data.seq_len=320", "--config.data.num_slots=64",
           "--config.train.batch_size=2", "--config.train.log_every=1",
           "--config.train.save_every=2", "--config.run.dtype=float32",
           "--config.optim.lr=0.01", "--config.dpo.beta=0.5", *extra]  # fmt: skip
    flags = "--xla_backend_optimization_level=0"
    # the second process reuses the first's compiled step (same program): half its time
    cache = os.path.join(files["d"], "jax_cache")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "--config.train.steps=3" in extra:
        assert "[train] resumed from step 2, data" in proc.stdout, proc.stdout[-2000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def params(path) -> dict[str, np.ndarray]:
    model, _ = load_checkpoint(path)
    return {"/".join(map(str, k)): np.asarray(v.get_value())
            for k, v in nnx.to_flat_state(nnx.state(model))}  # fmt: skip


def test_dpo_runs_resumes_and_keeps_the_vit_frozen(files, tmp_path):
    work = tmp_path / "run"
    first = train(files, work, "--config.train.steps=2", "--config.dpo.reference=weights")
    assert [m["step"] for m in first] == [1, 2]
    m = first[0]
    assert abs(m["loss"] - np.log(2)) < 1e-5 and abs(m["reward_margin"]) < 1e-5
    assert m["pairs"] > 0 and m["grad_norm"] > 0 and m["chosen_logps"] < 0
    lines = train(files, work, f"--config.train.steps={STEPS}",
                  "--config.dpo.reference=precomputed")  # fmt: skip
    assert [m["step"] for m in lines] == [1, 2, 3] and lines[:2] == first
    # the precomputed pass (initial weights, a fresh iterator) scored batch 0 as the weight
    # tree did at step 1: the mean chosen log-prob over its valid pairs
    table = np.load(work / "dpo_reference" / "process_0.npy")
    assert table.shape == (STEPS, 2, 2, 2)
    chosen = table[0][..., 0][table[0][..., 0] != 0]
    assert len(chosen) == m["pairs"]
    assert abs(chosen.mean() - m["chosen_logps"]) <= 1e-4 * abs(m["chosen_logps"])
    assert lines[-1]["reward_margin"] > 0  # the policy moved towards the chosen replies
    # the ViT (frozen) is bit-identical to the initial weights; the LLM moved
    init, final = params(files["init"]), params(work / str(STEPS) / "params")
    vit = [k for k in init if k.startswith("visual/") and not k.startswith("visual/merger/")]
    assert vit and all(np.array_equal(init[k], final[k]) for k in vit)
    assert all(not np.array_equal(init[k], final[k]) for k in init if k.startswith("decoder/"))
