"""Float32 parity of each component against the transformers module it ports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)

from qwen25vl_jax.data.hf_format import rope_index
from qwen25vl_jax.data.layout import vision_layout, vision_rope_positions
from qwen25vl_jax.model.decoder import decoder_layer
from qwen25vl_jax.model.rope import mrope, vision_rope
from qwen25vl_jax.model.vision import vision_block
from tests.cases import make_case
from tests.hf_reference import hf_inputs_to_torch

TOL = 1e-5
GRIDS = [(1, 10, 14), (2, 6, 8), (1, 4, 4)]  # ragged windows, a 2-frame video, one window


def layer(module, i):
    """Layer i of a stacked nnx module as a dict of arrays."""
    return jax.tree.map(lambda a: a[i], nnx.to_pure_dict(nnx.state(module)))


def close(ours, ref, tol=TOL):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    np.testing.assert_allclose(np.asarray(ours), ref, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def vit_case(tiny):
    """HF's window-permuted inputs for GRIDS, and our window layout of the same patches."""
    vis, cfg = tiny.torch.model.visual, tiny.cfg.vision
    grid_thw = torch.tensor(GRIDS)
    n = int(grid_thw.prod(-1).sum())
    x = torch.randn(n, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    window_index, cu_window = get_vision_window_index(
        grid_thw, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size
    )
    cos, sin = vis.rotary_pos_emb(x, get_vision_position_ids(grid_thw, cfg.spatial_merge_size))
    perm = lambda t: vis.permute_input_for_window_attn(t, window_index, n)  # noqa: E731
    lay = vision_layout(GRIDS, cfg)
    real = lay.patch_src >= 0
    x_lay = np.zeros((lay.num_slots, cfg.hidden_size), np.float32)
    x_lay[real] = x.numpy()[lay.patch_src[real]]
    return dict(
        x=perm(x), cos=perm(cos), sin=perm(sin), cu_window=cu_window,
        cu_full=get_vision_cu_seqlens(grid_thw), lay=lay, real=real, x_lay=x_lay,
    )  # fmt: skip


def test_patch_embed(tiny):
    x = np.random.default_rng(0).standard_normal((37, tiny.cfg.vision.patch_dim), np.float32)
    ref = tiny.torch.model.visual.patch_embed(torch.from_numpy(x))
    close(x @ np.asarray(tiny.jax.visual.patch_embed[...]), ref)


def test_vit_rope_positions_and_tables(tiny):
    cfg, vis = tiny.cfg.vision, tiny.torch.model.visual
    for grid in GRIDS:
        ref_pos = get_vision_position_ids(torch.tensor([grid]), cfg.spatial_merge_size)
        pos = vision_rope_positions(grid, cfg.spatial_merge_size)
        np.testing.assert_array_equal(pos, ref_pos.numpy())
        cos, sin = vision_rope(jnp.asarray(pos)[None], head_dim=cfg.head_dim, theta=cfg.rope_theta)
        ref_cos, ref_sin = vis.rotary_pos_emb(torch.zeros(1), ref_pos)
        close(cos[0], ref_cos)
        close(sin[0], ref_sin)


def test_window_layout_is_the_reference_window_partition(tiny, vit_case):
    lay, cfg = vit_case["lay"], tiny.cfg.vision
    # real slots in layout order are the reference's window-permuted sequence
    np.testing.assert_array_equal(vit_case["x_lay"][vit_case["real"]], vit_case["x"].numpy())
    counts = vit_case["real"].reshape(-1, cfg.window_patches).sum(-1)
    np.testing.assert_array_equal(np.cumsum(counts), vit_case["cu_window"][1:].numpy())
    # full-attention segments: one per image / video frame, in the reference's order
    seg = lay.vit_segment_ids[vit_case["real"]]
    np.testing.assert_array_equal(np.bincount(seg)[1:], np.diff(vit_case["cu_full"].numpy()))


@pytest.mark.parametrize("index", [0, 1], ids=["window_block", "full_block"])
def test_vision_block(tiny, vit_case, index):
    cfg = tiny.cfg.vision
    full = index in cfg.fullatt_block_indexes
    cu = vit_case["cu_full"] if full else vit_case["cu_window"]
    blk = tiny.torch.model.visual.blocks[index]
    ref = blk(vit_case["x"], cu_seqlens=cu, position_embeddings=(vit_case["cos"], vit_case["sin"]))
    lay = vit_case["lay"]
    cos, sin = vision_rope(jnp.asarray(lay.vit_positions)[None], head_dim=cfg.head_dim,
                           theta=cfg.rope_theta)  # fmt: skip
    ours = vision_block(
        layer(tiny.jax.visual.blocks, index), jnp.asarray(vit_case["x_lay"])[None], cos, sin,
        jnp.asarray(lay.vit_segment_ids)[None], full=full, cfg=cfg, backend="xla",
    )  # fmt: skip
    close(ours[0][vit_case["real"]], ref)


def test_merger(tiny, vit_case):
    ref = tiny.torch.model.visual.merger(vit_case["x"])
    ours = tiny.jax.visual.merger(jnp.asarray(vit_case["x_lay"])[None], dtype=jnp.float32)[0]
    real_units = vit_case["real"].reshape(-1, tiny.cfg.vision.merge_unit)[:, 0]
    close(ours[real_units], ref)


def _positions(b, length, seed):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(0, 3, (3, b, length)), axis=-1)


def test_mrope(tiny):
    t = tiny.cfg.text
    pos = _positions(2, 11, 0)
    ref_cos, ref_sin = tiny.torch.model.language_model.rotary_emb(
        torch.zeros(1, dtype=torch.float32), torch.from_numpy(pos)
    )
    cos, sin = mrope(jnp.asarray(pos), head_dim=t.head_dim, theta=t.rope_theta,
                     sections=t.mrope_section)  # fmt: skip
    close(cos, ref_cos)
    close(sin, ref_sin)


def test_decoder_layer(tiny):
    t = tiny.cfg.text
    b, length = 2, 13
    x = torch.randn(b, length, t.hidden_size, generator=torch.Generator().manual_seed(5))
    pos = _positions(b, length, 1)
    cos, sin = tiny.torch.model.language_model.rotary_emb(x, torch.from_numpy(pos))
    causal = np.tril(np.ones((length, length), bool))[None].repeat(b, 0)
    causal[1, :, :4] = False  # row 1: four left-pad keys
    additive = torch.from_numpy(np.where(causal, 0.0, -1e30).astype(np.float32))[:, None]
    ref = tiny.torch.model.language_model.layers[0](
        x, attention_mask=additive, position_embeddings=(cos, sin)
    )
    segment_ids = np.ones((b, length), np.int32)
    segment_ids[1, :4] = 0  # the same four left-pad keys, as segment ids
    ours, _ = decoder_layer(
        layer(tiny.jax.decoder.layers, 0), jnp.asarray(x.numpy()), jnp.asarray(cos.numpy()),
        jnp.asarray(sin.numpy()), jnp.asarray(segment_ids), cfg=t, backend="xla",
    )  # fmt: skip
    ref = ref[0] if isinstance(ref, tuple) else ref
    close(np.asarray(ours)[causal.any(-1)], ref.detach().numpy()[causal.any(-1)])


ROPE_CASES = {
    "images_right_pad": ([[3, ("image", (1, 6, 10)), 4, ("image", (1, 8, 4)), 2], [5]], "right"),
    "video_and_image_left_pad": (
        [[2, ("video", (5, 4, 6), 1 / 1.7), 3, ("image", (1, 10, 4)), 2],
         [6, ("image", (1, 4, 4))]],
        "left",
    ),
    "videos_odd_intervals": (
        [[1, ("video", (7, 6, 4), 0.3), 2, ("video", (9, 4, 4), 2 / 3), 1]], "left",
    ),
    "tall_video": ([[1, ("video", (12, 4, 4), 4.0), 3]], "left"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ROPE_CASES))
def test_rope_index_exact(tiny, name):
    rows, pad = ROPE_CASES[name]
    arrays = make_case(tiny.cfg, rows, seed=2, pad=pad)
    kw = hf_inputs_to_torch(tiny.cfg, arrays)
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    ref_pos, ref_deltas = tiny.torch.model.get_rope_index(
        kw["input_ids"], kw["mm_token_type_ids"], attention_mask=kw["attention_mask"], **grids
    )
    grids = {k: arrays.get(k) for k in grids}
    pos, deltas = rope_index(arrays["input_ids"], tiny.cfg,
                             attention_mask=arrays["attention_mask"], **grids)  # fmt: skip
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(deltas, ref_deltas.numpy())
