"""Training options users run: remat policies and unrolled layer scans give the gradients of
the default, weight decay skips norms / biases / embeddings, each module group steps at its own
learning rate, and the stage configs (sft, stage1, stage3) load and train."""

from __future__ import annotations

import math
import os

import jax
import jax.extend as jex
import numpy as np
import optax
import pytest
from absl import flags
from flax import nnx, traverse_util

from qwen25vl_jax.checkpoint import load_checkpoint
from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.packing import Bucket
from qwen25vl_jax.hf_weights import expected_names
from qwen25vl_jax.model.options import RunOptions
from qwen25vl_jax.model.qwen25vl import Qwen25VL
from qwen25vl_jax.sharding import make_mesh
from qwen25vl_jax.train.losses import token_logprobs
from qwen25vl_jax.train.optimizer import OptimConfig, make_optimizer, schedule
from qwen25vl_jax.train.step import (
    NextTokenLoss,
    SampleMeanLoss,
    objective_sums,
)
from qwen25vl_jax.train.synthetic import SyntheticBatches
from qwen25vl_jax.train.trainer import StepConfig, Trainer

CFG = ModelConfig.tiny()


def flat_params(model) -> dict[str, jax.Array]:
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)), sep="/")


def scan_unrolls(jaxpr) -> list[tuple[int, int]]:
    """(length, unroll) of every scan in `jaxpr` and the jaxprs nested in it."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append((eqn.params["length"], eqn.params["unroll"]))
        for sub in jex.core.jaxprs_in_params(eqn.params):
            out.extend(scan_unrolls(sub))
    return out


def test_remat_policies_and_unrolled_layers_give_the_gradients_of_the_default():
    model = Qwen25VL(CFG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.graphdef(model), flat_params(model)
    batch = next(SyntheticBatches(CFG, Bucket(96, 16 * 48), batch_size=2, seed=1))
    assert batch.patches.shape[1] > 0 and batch.loss_mask.sum() > 0

    def mean_loss(p, policy, unroll=False):
        total, (count, _) = objective_sums(p, {}, batch, graphdef=graphdef,
                                           opts=RunOptions(remat=policy, unroll=unroll),
                                           objective=NextTokenLoss(chunk=32))  # fmt: skip
        return total / count

    grads, wrapped = {}, {}
    for policy in ("none", "full", "dots"):
        # the policy really wraps the scanned layers (vision and decoder) in a checkpoint (the
        # loss's chunks are checkpointed whatever the policy)
        jaxpr = str(jax.make_jaxpr(lambda p, policy=policy: mean_loss(p, policy))(params))
        wrapped[policy] = jaxpr.count("remat")
        assert policy == "none" or wrapped[policy] >= wrapped["none"] + 2, (policy, wrapped)
        assert ("policy=<function nothing_saveable" in jaxpr) == (policy == "full"), policy
        grads[policy] = jax.device_get(
            jax.jit(jax.grad(mean_loss), static_argnums=1)(params, policy)
        )
    # unrolled layer scans (the demo's setting, `run.unroll`): every scan of the step runs
    # all its iterations in one body (a one-iteration scan stays a loop of one trip)
    for unroll in (False, True):
        jaxpr = jax.make_jaxpr(jax.grad(mean_loss), static_argnums=(1, 2))(params, "none", unroll)
        scans = scan_unrolls(jaxpr.jaxpr)
        assert max(n for n, _ in scans) >= CFG.text.num_layers, scans
        assert all(u == (n if unroll else 1) for n, u in scans), (unroll, scans)
    unrolled = jax.jit(jax.grad(mean_loss), static_argnums=(1, 2))
    grads["unroll"] = jax.device_get(unrolled(params, "none", True))
    ref = grads["none"]
    for policy in ("full", "dots", "unroll"):
        for k in ref:
            scale = float(np.linalg.norm(ref[k]))
            diff = float(np.linalg.norm(grads[policy][k] - ref[k]))
            assert scale > 0 and diff <= 1e-5 * scale, (policy, k, diff / max(scale, 1e-30))


@pytest.mark.parametrize("average,power", [("sample", 0.0), ("sqrt", 0.5)])
def test_sample_averages_weigh_packed_samples(average, power):
    """`StepConfig(loss_average=...)` trains on `SampleMeanLoss`: each packed sample's mean
    token loss, weighted by n ** power for its n supervised tokens (the torch reference of the
    formula is in test_losses)."""
    model = Qwen25VL(CFG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.graphdef(model), flat_params(model)
    batch = next(SyntheticBatches(CFG, Bucket(96, 16 * 48), batch_size=2, seed=1))
    opts = RunOptions()
    logp = np.asarray(
        token_logprobs(model.hidden(batch, opts), model.decoder.logits, batch.targets)
    )
    mask, segs = np.asarray(batch.loss_mask), np.asarray(batch.segment_ids)
    per_sample = [
        (-(logp[r] * mask[r])[segs[r] == s].sum(), mask[r][segs[r] == s].sum())
        for r in range(segs.shape[0]) for s in set(segs[r][mask[r] > 0].tolist())
    ]  # fmt: skip
    assert len(per_sample) >= 3 and len({n for _, n in per_sample}) >= 2
    mesh = make_mesh(1, 1, 1)
    step = StepConfig(loss_average=average)
    objective = Trainer(CFG, OptimConfig(), opts, mesh, step=step).objective
    assert type(objective) is SampleMeanLoss and objective.power == power
    total, (count, _) = objective_sums(
        params, {}, batch, graphdef=graphdef, opts=opts, objective=objective
    )
    np.testing.assert_allclose(float(count), sum(n**power for _, n in per_sample), rtol=1e-6)
    np.testing.assert_allclose(
        float(total), sum(n**power * loss / n for loss, n in per_sample), rtol=1e-5
    )
    token_mean = -(logp * mask).sum() / mask.sum()
    assert abs(float(total) / float(count) - token_mean) > 1e-4  # not the per-token average
    with pytest.raises(ValueError, match="loss_average"):
        StepConfig(loss_average="segment")


def group(path: str) -> str:
    """The module group of a parameter path: vit, merger or llm."""
    if path.startswith("visual/merger/"):
        return "merger"
    return "vit" if path.startswith("visual/") else "llm"


def no_decay_by_released_name(name: str) -> bool:
    """Norms, biases and the (input, output) embeddings take no weight decay, by the released
    (Hugging Face) parameter names: independent of our paths."""
    return (
        name.endswith(".bias") or "norm" in name or ".ln_q." in name
        or "embed_tokens" in name or name.startswith("lm_head")
    )  # fmt: skip


def test_weight_decay_mask_and_group_learning_rates():
    """Two AdamW steps on every real parameter with gradient 1 (the first at learning rate 0:
    warmup starts at 0). The second moves p by -lr_group * (1 + weight_decay * p) where p
    decays and by -lr_group where it does not; the LLM has no lr of its own: the base lr."""
    names = {}
    for rule, _, name in expected_names(CFG):
        names.setdefault(rule.path, []).append(name)
    abstract = nnx.eval_shape(lambda: Qwen25VL(CFG, rngs=nnx.Rngs(0)))
    shapes = {k: v.shape for k, v in flat_params(abstract).items()}
    assert shapes.keys() == names.keys()
    rng = np.random.default_rng(0)
    params = {k: (1.0 + rng.random(s)).astype(np.float32) for k, s in shapes.items()}
    lrs = {"vit": 1e-3, "merger": 3e-3, "llm": 2e-2}
    optim = OptimConfig(lr=lrs["llm"], vit_lr=lrs["vit"], merger_lr=lrs["merger"], warmup_steps=1,
                        total_steps=1000, weight_decay=0.25, grad_clip=1e9)  # fmt: skip
    opt = make_optimizer(optim, params)
    state, p = opt.init(params), params
    ones = {k: np.ones_like(v) for k, v in params.items()}
    for _ in range(2):
        updates, state = opt.update(ones, state, p)
        p = optax.apply_updates(p, updates)
    seen = {"decay": 0, "no_decay": 0}
    for k, released in names.items():
        no_decay = {no_decay_by_released_name(n) for n in released}
        assert len(no_decay) == 1, released
        decay = not no_decay.pop()
        seen["decay" if decay else "no_decay"] += 1
        want = params[k] - lrs[group(k)] * (
            1.0 + (optim.weight_decay * params[k] if decay else 0.0)
        )
        np.testing.assert_allclose(p[k], want, rtol=0, atol=1e-6, err_msg=k)
    assert seen["decay"] >= 10 and seen["no_decay"] >= 10, seen


def test_schedule_warmup_and_no_warmup():
    """Warmup climbs from 0 to the peak; warmup_steps 0 starts at the peak (no step at lr 0)."""
    warm = schedule(OptimConfig(warmup_steps=4, total_steps=100), 2.0)
    np.testing.assert_allclose([float(warm(s)) for s in range(5)], [0, 0.5, 1, 1.5, 2], rtol=1e-6)
    cold = schedule(OptimConfig(warmup_steps=0, total_steps=100, end_lr_ratio=0.1), 2.0)
    assert float(cold(0)) == 2.0 and 1.99 < float(cold(1)) < 2.0
    np.testing.assert_allclose(float(cold(50)), 1.1, rtol=1e-5)  # halfway down the cosine
    np.testing.assert_allclose(float(cold(100)), 0.2, rtol=1e-5)


# ---- the stage configs, as experiments/train.py reads them -----------------------------------
STAGES = {  # config -> (groups it must train, groups it must freeze)
    "sft": ({"merger", "llm"}, {"vit"}),
    "stage1_vit": ({"vit", "merger"}, {"llm"}),
    "stage3_long": ({"vit", "merger", "llm"}, set()),
}


@pytest.mark.heavy
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_config_loads_and_trains(stage, tmp_path):
    """Two steps of the config at the tiny size through `experiments.train.train`: finite
    losses, and between the two checkpoints exactly the groups the stage trains move."""
    import importlib

    from experiments import train

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # flag defaults (no --peak_tflops) without a command line
    c = importlib.import_module(f"experiments.configs.{stage}").get_config("tiny")
    c.data.source = "synthetic"
    c.train.steps, c.train.log_every, c.train.save_every, c.train.batch_size = 2, 1, 1, 2
    losses = train.train(c, str(tmp_path))
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    first, second = (flat_params(load_checkpoint(os.path.join(tmp_path, str(s)))[0])
                     for s in (1, 2))  # fmt: skip
    trains, freezes = STAGES[stage]
    moved = {g: False for g in trains | freezes}
    for k in first:
        same = np.array_equal(np.asarray(first[k]), np.asarray(second[k]))
        moved[group(k)] |= not same
    assert moved == {g: g in trains for g in moved}, moved
