"""`ModelConfig.position_after_video`: where text resumes after a video whose temporal positions
outrun its spatial grid, and whether KV-cache decoding agrees with training positions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qwen25vl_jax.config import ModelConfig, config_from_hf_dict
from qwen25vl_jax.data.hf_format import rope_index


def _sequence(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids of: 3 text, <vision_start>, a video of grid (6, 4, 4) -> 6 x 2 x 2 tokens at 1 fps
    (2 s per temporal step, so temporal positions reach 5 * 2 * 2 = 20 > the 2 x 2 grid),
    <vision_end>, 5 answer tokens."""
    ids = [1, 2, 3, cfg.vision_start_token_id] + [cfg.video_token_id] * 24
    ids += [cfg.vision_end_token_id, 4, 5, 6, 7, 8]
    return np.asarray([ids]), np.asarray([[6, 4, 4]]), np.asarray([2.0])


@pytest.mark.parametrize("mode", ["spatial", "max"])
def test_text_after_video_and_decode_positions(mode):
    cfg = dataclasses.replace(ModelConfig.tiny(), position_after_video=mode)
    ids, grid, spg = _sequence(cfg)
    pos, _ = rope_index(ids, cfg, video_grid_thw=grid, second_per_grid_ts=spg)
    video_start = 4  # text 0..3 -> the video's positions start at 4
    t_max = int(pos[0, 0, 4:28].max())
    assert t_max == video_start + 5 * 2 * 2  # trunc(t * tokens_per_second * 2 s)
    after = int(pos[0, 0, 28])  # <vision_end>
    assert after == (t_max + 1 if mode == "max" else video_start + 2)  # grid 4x4 -> 2x2 merged

    # decoding a prompt that ends 2 tokens into the answer puts the next tokens at
    # position + rope_deltas; training gave them their positions in the whole sequence
    prompt = ids[:, :31]
    _, deltas = rope_index(prompt, cfg, video_grid_thw=grid, second_per_grid_ts=spg)
    decode = np.arange(31, ids.shape[1]) + int(deltas[0, 0])
    trained = pos[0, 0, 31:]
    assert np.array_equal(decode, trained) == (mode == "max")


def test_position_after_video_round_trips_through_config_json():
    cfg = dataclasses.replace(ModelConfig.tiny(), position_after_video="max")
    d = cfg.to_hf_dict()
    assert d["position_after_video"] == "max"
    assert config_from_hf_dict(d) == cfg
    assert "position_after_video" not in ModelConfig.tiny().to_hf_dict()  # released layout
    with pytest.raises(ValueError, match="position_after_video"):
        dataclasses.replace(cfg, position_after_video="next")
