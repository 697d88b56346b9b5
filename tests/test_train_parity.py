"""One training step's loss and gradients equal those of transformers + torch (float32)."""

from __future__ import annotations

import jax
import numpy as np
import torch
from flax import nnx

from qwen25vl_jax.data.hf_format import batch_from_hf
from qwen25vl_jax.hf_weights import released_name
from qwen25vl_jax.model.qwen25vl import RunOptions
from qwen25vl_jax.param_paths import flatten
from qwen25vl_jax.train.step import NextTokenLoss, objective_sums
from tests.cases import make_case
from tests.hf_reference import assert_grads_match, hf_inputs_to_torch

REL = 1e-4


def test_loss_and_grads_match_transformers(tiny):
    cfg = tiny.cfg
    rows = [[3, ("image", (1, 6, 10)), 12], [2, ("video", (2, 4, 6), 0.75), 9]]
    arrays = make_case(cfg, rows, seed=5, pad="right")
    mask = arrays["attention_mask"].astype(bool)
    supervised = mask & (np.arange(mask.shape[1]) % 3 != 0)  # a non-trivial loss mask
    supervised &= arrays["input_ids"] < 200  # never predict media tokens

    # reference: mean over supervised next tokens, as transformers' shifted labels
    kw = hf_inputs_to_torch(cfg, arrays)
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    model = tiny.torch
    model.zero_grad()
    pos, _ = model.model.get_rope_index(kw["input_ids"], kw["mm_token_type_ids"],
                                        attention_mask=kw["attention_mask"], **grids)  # fmt: skip
    labels = torch.where(torch.from_numpy(supervised), kw["input_ids"], -100)
    ref_loss = model(**kw, position_ids=pos, labels=labels).loss
    ref_loss.backward()
    ref_grads = {released_name(n): p for n, p in model.named_parameters()}

    batch = batch_from_hf(cfg, arrays, supervised)
    params = flatten(nnx.to_pure_dict(nnx.state(tiny.jax)))
    graphdef = nnx.graphdef(tiny.jax)

    def mean_loss(p):
        total, (count, _) = objective_sums(p, {}, batch, graphdef=graphdef, opts=RunOptions(),
                                           objective=NextTokenLoss(chunk=8))  # fmt: skip
        return total / count

    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(params)
    assert abs(float(loss) - ref_loss.item()) <= REL * abs(ref_loss.item())
    assert_grads_match(cfg, {k: g.grad.numpy() for k, g in ref_grads.items()}, grads, REL)
