"""The main job until the end-to-end demo lands: build a small random Qwen2.5-VL with the real
Qwen2.5 vocabulary, save it as an Orbax checkpoint, export it to the Hugging Face layout, and
score an image + question with both (they must agree exactly).

  python -m experiments.demo_score [--workdir=out/demo_score]
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
from absl import app, flags
from flax import nnx
from PIL import Image, ImageDraw

from experiments.score import score
from qwen25vl_jax.checkpoint import load_checkpoint, save_params
from qwen25vl_jax.config import TOKEN_ID_FIELDS, ModelConfig
from qwen25vl_jax.data.hf_format import hf_from_samples
from qwen25vl_jax.data.media import image_media
from qwen25vl_jax.data.sample import encode_sample
from qwen25vl_jax.data.tokenizer import build_qwen_tokenizer, save_tokenizer_dir
from qwen25vl_jax.data.vision import MAX_PIXELS, MIN_PIXELS
from qwen25vl_jax.hf_weights import load_hf
from qwen25vl_jax.model.qwen25vl import Qwen25VL

flags.DEFINE_string("workdir", "out/demo_score", "where the checkpoints are written")
FLAGS = flags.FLAGS


def demo_image() -> Image.Image:
    img = Image.new("RGB", (364, 252), (235, 235, 225))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 60, 140, 160), fill=(220, 30, 30))
    draw.polygon([(220, 200), (300, 200), (260, 120)], fill=(30, 90, 220))
    return img


def main(argv):
    del argv
    # the tiny model's shapes, with the real vocabulary and special token ids
    real = ModelConfig()
    cfg = dataclasses.replace(
        ModelConfig.tiny(vocab_size=151665),
        **{f: getattr(real, f) for f in TOKEN_ID_FIELDS},
    )
    shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    os.makedirs(FLAGS.workdir)
    ckpt = save_params(os.path.join(FLAGS.workdir, "orbax"), Qwen25VL(cfg, rngs=nnx.Rngs(0)), cfg)
    from checkpoints_convert.orbax_to_hf import export

    hf_dir = os.path.join(FLAGS.workdir, "hf")
    export(ckpt, hf_dir)
    tokenizer = build_qwen_tokenizer()
    save_tokenizer_dir(tokenizer, hf_dir)

    media = image_media(demo_image(), cfg.vision, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Where is the red circle?"}],
        }
    ]
    sample = encode_sample(cfg, tokenizer, messages, [media], add_generation_prompt=True)
    arrays = hf_from_samples([sample])  # the processor format: the scorer's edge
    ids, grid = sample.input_ids, media.grid
    from_orbax = score(*load_checkpoint(ckpt), arrays)
    from_hf = score(*load_hf(hf_dir), arrays)
    assert np.array_equal(from_orbax["logits"], from_hf["logits"])
    logits = from_orbax["logits"][0, -1]
    top = np.argsort(-logits)[:5]
    image = ids == cfg.image_token_id
    print(
        f"image 364x252 -> grid {list(grid)} -> {int(image.sum())} vision tokens; "
        f"prompt of {len(ids)} tokens"
    )
    print(
        "3-D positions of the first vision tokens (t, h, w):",
        from_orbax["position_ids"][:, 0, image][:, :4].T.tolist(),
    )
    print(
        "next-token top-5 of the random model:",
        [(tokenizer.decode([int(t)]), round(float(logits[t]), 3)) for t in top],
    )
    print(f"Orbax checkpoint {ckpt} and its Hugging Face export {hf_dir} give identical logits.")


if __name__ == "__main__":
    app.run(main)
