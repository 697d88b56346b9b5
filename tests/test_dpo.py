"""DPO: loss and gradients equal a PyTorch implementation of the same formula on transformers'
logits (float32, random model with non-trivial biases / norms); packed pairs equal unpacked;
the ViT runs once per pair; the loss formulas on hand values."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from qwen25vl_jax.data.hf_format import hf_from_samples
from qwen25vl_jax.data.media import Media
from qwen25vl_jax.data.preference import Pair, preference_batch
from qwen25vl_jax.data.sample import make_sample
from qwen25vl_jax.hf_weights import released_name
from qwen25vl_jax.model.qwen25vl import RunOptions
from qwen25vl_jax.param_paths import flatten
from qwen25vl_jax.train.dpo import DPOLoss, preference_loss
from qwen25vl_jax.train.step import objective_sums
from tests.hf_reference import assert_grads_match, hf_inputs_to_torch

REL = 1e-4
BETA, SMOOTHING = 0.1, 0.1
SLOTS = 128  # ViT slots per row: both pairs' images (96 + 16 slots in the tiny window layout)


def make_pairs(cfg, seed=0) -> list[Pair]:
    """Two pairs, each an image prompt (own grid) with two random replies of different lengths."""
    rng = np.random.default_rng(seed)
    pairs = []
    for grid, (nc, nr) in (((1, 6, 10), (7, 4)), ((1, 4, 4), (3, 6))):
        units = int(np.prod(grid)) // cfg.vision.merge_unit
        vision = [cfg.vision_start_token_id, *[cfg.image_token_id] * units, cfg.vision_end_token_id]
        prompt = [*rng.integers(0, 200, 3), *vision, *rng.integers(0, 200, 4)]
        media = [Media("image", rng.standard_normal((int(np.prod(grid)), cfg.vision.patch_dim)),
                       grid)]  # fmt: skip
        replies = []
        for n in (nc, nr):
            ids = np.array([*prompt, *rng.integers(0, 200, n)], np.int32)
            replies.append(make_sample(cfg, ids, np.arange(len(ids)) >= len(prompt), media))
        pairs.append(Pair(*replies))
    return pairs


def torch_dpo(model, cfg, pairs, ref: np.ndarray, loss_type="sigmoid"):
    """Mean DPO loss over pairs from transformers' logits, each reply a separate sequence (its
    own copy of the image): (loss tensor, reply log-probs float64[pairs, 2])."""
    samples = [s for p in pairs for s in (p.chosen, p.rejected)]
    arrays = hf_from_samples(samples, padding="right")
    kw = hf_inputs_to_torch(cfg, arrays)
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    pos, _ = model.model.get_rope_index(kw["input_ids"], kw["mm_token_type_ids"],
                                        attention_mask=kw["attention_mask"], **grids)  # fmt: skip
    logits = model(**kw, position_ids=pos).logits
    mask = np.zeros(arrays["input_ids"].shape, np.float32)
    for r, s in enumerate(samples):
        mask[r, : s.num_tokens] = s.loss_mask
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, kw["input_ids"][:, 1:, None])[..., 0]
    seq = (logp * torch.from_numpy(mask[:, 1:])).sum(-1).reshape(-1, 2)
    h = (seq[:, 0] - seq[:, 1]) - torch.from_numpy(ref[:, 0] - ref[:, 1])
    if loss_type == "sigmoid":
        loss = -(1 - SMOOTHING) * torch.nn.functional.logsigmoid(BETA * h) - (
            SMOOTHING * torch.nn.functional.logsigmoid(-BETA * h)
        )
    else:
        loss = (h - 1 / (2 * BETA)) ** 2
    return loss.mean(), seq.detach().numpy()


def loss_and_grads(tiny, batch, objective):
    """(mean loss, metric sums, gradients) of `objective` on `batch` under the tiny model; one
    compiled function per objective, reused by batches of the same shapes."""
    fn = _compiled.get(objective)
    if fn is None:
        graphdef = nnx.graphdef(tiny.jax)

        def mean_loss(p, batch):
            total, (count, sums) = objective_sums(
                p, {}, batch, graphdef=graphdef, opts=RunOptions(), objective=objective
            )
            return total / count, sums

        fn = _compiled[objective] = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))
    params = flatten(nnx.to_pure_dict(nnx.state(tiny.jax)))
    (loss, sums), grads = fn(params, batch)
    return float(loss), jax.device_get(sums), jax.device_get(grads)


_compiled: dict = {}


def with_ref(batch, ref):
    return dataclasses.replace(batch, ref_logps=np.asarray(ref, np.float32))


@pytest.fixture(scope="module")
def case(tiny):
    """The reference's loss, reply log-probs and gradients, and our packed batch's."""
    cfg, model = tiny.cfg, tiny.torch
    pairs = make_pairs(cfg)
    with torch.no_grad():
        _, seq = torch_dpo(model, cfg, pairs, np.zeros((2, 2)))
    # reference log-probs off the policy's by a few nats: beta * h in about [-1, 1]
    ref = seq + np.array([[3.0, -4.0], [-6.0, 2.0]])
    model.zero_grad()
    ref_loss, seq = torch_dpo(model, cfg, pairs, ref)
    ref_loss.backward()
    ref_grads = {released_name(n): p.grad.numpy() for n, p in model.named_parameters()}
    objective = DPOLoss(beta=BETA, label_smoothing=SMOOTHING, chunk=8)
    # both pairs in row 0, row 1 empty: the shapes of the unpacked batch (one compile for both)
    packed = preference_batch([pairs, []], cfg, seq_len=96, num_slots=SLOTS, pairs_per_row=2)
    packed = with_ref(packed, [ref, np.zeros((2, 2))])
    ours = loss_and_grads(tiny, packed, objective)
    return dict(cfg=cfg, pairs=pairs, ref=ref, seq=seq, ref_loss=ref_loss.item(),
                ref_grads=ref_grads, packed=packed, ours=ours, objective=objective)  # fmt: skip


def test_loss_and_grads_match_transformers(case):
    cfg, (loss, sums, grads) = case["cfg"], case["ours"]
    assert abs(loss - case["ref_loss"]) <= REL * abs(case["ref_loss"]), (loss, case["ref_loss"])
    # metrics are means over the 2 pairs: chosen log-probs as the reference's
    assert abs(sums["chosen_logps"] / 2 - case["seq"][:, 0].mean()) <= REL * abs(
        case["seq"][:, 0].mean()
    )
    worst = assert_grads_match(cfg, case["ref_grads"], grads, REL)
    print(f"DPO loss rel error {abs(loss - case['ref_loss']) / abs(case['ref_loss']):.1e}, "
          f"worst gradient rel error {worst:.1e}")  # fmt: skip


def test_packed_pairs_equal_unpacked(tiny, case):
    """One pair per row (2 rows) gives the loss, metrics and gradients of both pairs in one row."""
    unpacked = preference_batch([[p] for p in case["pairs"]], case["cfg"], seq_len=96,
                                num_slots=SLOTS, pairs_per_row=2)  # fmt: skip
    assert unpacked.pair_segments.tolist() == [[[1, 2], [0, 0]], [[1, 2], [0, 0]]]
    unpacked = with_ref(unpacked, np.stack([case["ref"], 0 * case["ref"]], 1))
    loss, sums, grads = loss_and_grads(tiny, unpacked, case["objective"])
    want_loss, want_sums, want_grads = case["ours"]
    assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
    for k in want_sums:
        assert abs(sums[k] - want_sums[k]) <= 1e-5 * max(abs(want_sums[k]), 1.0), k
    for k in want_grads:
        scale = max(np.linalg.norm(want_grads[k]), 1e-12)
        assert np.linalg.norm(grads[k] - want_grads[k]) <= 1e-5 * scale, k


def test_pair_shares_its_vision_tokens(case):
    """Patches appear once per pair in the ViT layout; both replies gather the same units."""
    b, pairs = case["packed"], case["pairs"]
    assert (b.vit_segment_ids > 0).sum() == sum(p.num_patches for p in pairs)
    for k in range(2):
        c, r = (b.vision_index[0][b.segment_ids[0] == s] for s in (2 * k + 1, 2 * k + 2))
        c, r = c[c >= 0], r[r >= 0]
        assert len(c) > 0 and np.array_equal(c, r)
    assert b.pair_segments.tolist() == [[[1, 2], [3, 4]], [[0, 0], [0, 0]]]
    # only the replies are supervised: supervised targets = reply tokens of the 4 sequences
    replies = sum(int(s.loss_mask.sum()) for p in pairs for s in (p.chosen, p.rejected))
    assert b.loss_mask.sum() == replies


def test_loss_formulas_on_hand_values():
    """sigmoid (with label smoothing) and IPO against torch on fixed log-probs; valid masks."""
    rng = np.random.default_rng(3)
    policy, ref = rng.normal(-20, 5, (3, 2, 2)), rng.normal(-20, 5, (3, 2, 2))
    valid = np.array([[1, 1], [1, 0], [0, 0]], np.float32)
    h = torch.from_numpy((policy[..., 0] - policy[..., 1]) - (ref[..., 0] - ref[..., 1]))
    logsig = torch.nn.functional.logsigmoid
    m = torch.from_numpy(valid).double()
    for kind, eps, want in (
        ("sigmoid", 0.0, -logsig(0.5 * h)),
        ("sigmoid", 0.2, -0.8 * logsig(0.5 * h) - 0.2 * logsig(-0.5 * h)),
        ("ipo", 0.0, (h - 1 / (2 * 0.5)) ** 2),
    ):
        total, count, sums = preference_loss(policy.astype(np.float32), ref.astype(np.float32),
                                             valid, beta=0.5, loss_type=kind,
                                             label_smoothing=eps)  # fmt: skip
        assert float(count) == 3
        np.testing.assert_allclose(float(total), float((want * m).sum()), rtol=1e-5)
    rewards = 0.5 * (policy - ref)
    margin = rewards[..., 0] - rewards[..., 1]
    np.testing.assert_allclose(float(sums["reward_margin"]), (margin * valid).sum(), rtol=1e-5)
    assert float(sums["reward_accuracy"]) == ((margin > 0) * valid).sum()
