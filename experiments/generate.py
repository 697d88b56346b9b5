"""Answer a question about images / a video, ground objects, or produce parity rollouts.

Chat (streams the answer):
  python -m experiments.generate --hf_dir=DIR --image=cat.jpg --prompt="Describe the image."
  python -m experiments.generate --checkpoint=CKPT --tokenizer_dir=DIR --video=clip.mp4 --fps=2 \
      --prompt="What happens?" --temperature=0.7 --top_p=0.9 --seed=1
Grounding (boxes / points in the original image's pixels, drawn with labels):
  python -m experiments.generate --hf_dir=DIR --image=street.jpg --draw=out.png \
      --prompt='Locate every car, output bbox_2d coordinates in JSON.'
Parity (processor-format arrays in, generated ids `tokens` int32[B, max_new_tokens] out):
  python -m experiments.generate --hf_dir=DIR --inputs=case.npz --output=tokens.npz
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import flags

from qwen25vl_jax.atomic_write import atomic_path
from qwen25vl_jax.cli_errors import (
    InputError,
    check_output_file,
    input_errors,
    one_line,
    run,
    write_npz,
)
from qwen25vl_jax.precision import define_precision_flag, set_matmul_precision

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory (safetensors).")
flags.DEFINE_string("checkpoint", None, "Orbax checkpoint directory (from the converter).")
flags.DEFINE_string("tokenizer_dir", None, "Directory with tokenizer.json (default: the model's).")
flags.DEFINE_multi_string("image", [], "Image path (repeatable).")
flags.DEFINE_string("video", None, "Video path.")
flags.DEFINE_float("fps", 2.0, "Video sampling rate (frames per second).")
flags.DEFINE_string("prompt", "Describe this image.", "The user's question.")
flags.DEFINE_string("system", None, "System message (default: the template's).")
flags.DEFINE_integer("max_new_tokens", 256, "Tokens to generate at most.")
flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).")
flags.DEFINE_integer("seed", 0, "PRNG seed of the sampler.")
flags.DEFINE_integer("min_pixels", None, "Smallest resized area (default: the processor's).")
flags.DEFINE_integer("max_pixels", None, "Largest resized area (default: the processor's).")
flags.DEFINE_string("inputs", None, "Parity mode: .npz of processor-format arrays.")
flags.DEFINE_string("output", None, "Parity mode: .npz to write `tokens` to.")
flags.DEFINE_string("draw", None, "Draw the grounded boxes / points on the first image here.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute and parameter dtype.")
flags.DEFINE_enum("cache_dtype", None, ["float32", "bfloat16"], "KV cache dtype (default dtype).")
flags.DEFINE_integer("cache_size", None, "KV cache slots (default: prompt bucket + new tokens).")
define_precision_flag("highest")


def check_media_files(images: list[str], video: str | None) -> None:
    """`InputError` naming the first --image that is missing or does not decode, or a missing
    --video (checked before the model loads; a video that does not decode fails at decoding)."""
    from PIL import Image

    for path in images:
        if not os.path.isfile(path):
            raise InputError(f"--image {path}: no such file")
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
            raise InputError(f"--image {path}: cannot decode the image ({one_line(err)})") from None
    if video and not os.path.isfile(video):
        raise InputError(f"--video {video}: no such file")


PROMPT_SOURCE = "the prompt (check --tokenizer_dir matches the model)"


def build_chat_prompt(cfg, tokenizer):
    """Encodes the images / video and the chat prompt into one `Sample`. Returns (sample,
    images) where images is a list of (PIL image, resized (h, w)) for grounding."""
    from PIL import Image

    from qwen25vl_jax import data
    from qwen25vl_jax.data.media import image_media, video_media
    from qwen25vl_jax.data.sample import encode_sample

    media, images, content = [], [], []
    for path in FLAGS.image:
        img = Image.open(path)
        img.load()
        with input_errors(ValueError, prefix=f"--image {path}: "):  # e.g. aspect ratio > 200
            media.append(
                image_media(
                    img,
                    cfg.vision,
                    min_pixels=FLAGS.min_pixels or data.MIN_PIXELS,
                    max_pixels=FLAGS.max_pixels or data.MAX_PIXELS,
                )
            )
        images.append((img, media[-1].resized_hw(cfg.vision.patch_size)))
        content.append({"type": "image"})
    if FLAGS.video:
        with input_errors(Exception, prefix=f"--video {FLAGS.video}: cannot decode the video: "):
            frames, fps = data.decode_video(FLAGS.video, fps=FLAGS.fps)
        media.append(
            video_media(
                frames,
                fps,
                cfg.vision,
                min_pixels=FLAGS.min_pixels or data.VIDEO_MIN_PIXELS,
                max_pixels=FLAGS.max_pixels or data.VIDEO_MAX_PIXELS,
            )
        )
        content.append({"type": "video"})
    content.append({"type": "text", "text": FLAGS.prompt})
    messages = [{"role": "user", "content": content}]
    if FLAGS.system is not None:
        messages.insert(0, {"role": "system", "content": FLAGS.system})
    with input_errors(ValueError, prefix=f"{PROMPT_SOURCE}: "):  # e.g. ids over the vocabulary
        prompt = encode_sample(cfg, tokenizer, messages, media, add_generation_prompt=True)
    return prompt, images


def stream_answer(gen, prompt, tokenizer, stop, gen_kw) -> str:
    """Prints the answer as tokens arrive (whole characters only); returns it."""
    ids, printed = [], ""
    t0 = time.perf_counter()
    for step in gen.stream([prompt], stop_tokens=stop, **gen_kw):
        tok = int(step[0])
        if tok in stop:
            break
        ids.append(tok)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
            print(text[len(printed) :], end="", flush=True)
            printed = text
    dt = time.perf_counter() - t0
    print(f"\n[{len(ids)} tokens in {dt:.2f} s]", file=sys.stderr)
    return tokenizer.decode(ids, skip_special_tokens=True)


def report_grounding(answer: str, images) -> None:
    """Prints the boxes / points in original-image pixels; draws them with --draw."""
    from qwen25vl_jax.inference.grounding import draw_detections, ground

    wants = FLAGS.draw or "bbox_2d" in answer or "point_2d" in answer
    if not wants:
        return
    if not images:
        print("grounding: no image given, nothing to map the coordinates to", file=sys.stderr)
        return
    if len(images) > 1:
        print("grounding: coordinates are read against the first image", file=sys.stderr)
    img, resized = images[0]
    result = ground(answer, resized, (img.height, img.width))
    for problem in result.problems:
        print(f"grounding: {problem}", file=sys.stderr)
    for d in result.detections:
        coords = ", ".join(f"{c:.1f}" for c in d.coords)
        print(f"{d.kind} [{coords}] {d.label or ''}".rstrip())
    if FLAGS.draw:
        with atomic_path(FLAGS.draw) as tmp:
            draw_detections(img, result.detections).save(tmp, format="PNG")
        print(f"grounding: {len(result.detections)} drawn to {FLAGS.draw}", file=sys.stderr)


def main(argv):
    del argv
    from qwen25vl_jax.data.processor_inputs import check_processor_arrays
    from qwen25vl_jax.loading import (
        LOAD_ERRORS,
        load_model,
        read_model_config,
        read_processor_arrays,
    )

    if bool(FLAGS.inputs) != bool(FLAGS.output):
        raise InputError("--inputs and --output go together (parity mode)")
    if bool(FLAGS.hf_dir) == bool(FLAGS.checkpoint):
        raise InputError("give exactly one of --hf_dir and --checkpoint")
    sources = dict(checkpoint=FLAGS.checkpoint or None, hf_dir=FLAGS.hf_dir or None)
    # everything the run reads or writes is checked before the model loads
    with input_errors(*LOAD_ERRORS):
        cfg = read_model_config(**sources)
    if FLAGS.inputs:
        with input_errors(*LOAD_ERRORS):
            arrays = read_processor_arrays(FLAGS.inputs)
        source = FLAGS.inputs
        check_output_file(FLAGS.output)
    else:
        check_media_files(FLAGS.image, FLAGS.video)
        if FLAGS.draw:
            check_output_file(FLAGS.draw)
        from qwen25vl_jax.data.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(FLAGS.tokenizer_dir or FLAGS.hf_dir or FLAGS.checkpoint)
        except FileNotFoundError as err:
            raise InputError(f"{one_line(err)}; or pass --tokenizer_dir") from None
        from qwen25vl_jax.data.hf_format import hf_from_samples

        prompt, images = build_chat_prompt(cfg, tokenizer)
        arrays = hf_from_samples([prompt])  # checked at the door as --inputs are
        source = PROMPT_SOURCE
    check_processor_arrays(arrays, cfg, source)
    set_matmul_precision(FLAGS.matmul_precision)

    import jax
    import jax.numpy as jnp

    from qwen25vl_jax.inference import Generator, Sampling
    from qwen25vl_jax.model.qwen25vl import RunOptions

    dtype = jnp.dtype(FLAGS.dtype)
    with input_errors(*LOAD_ERRORS):
        model, cfg = load_model(**sources, dtype=dtype)
    gen = Generator(model, opts=RunOptions(dtype=dtype), cache_dtype=FLAGS.cache_dtype)
    gen_kw = dict(
        max_new_tokens=FLAGS.max_new_tokens,
        key=jax.random.key(FLAGS.seed),
        sampling=Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p),
        cache_size=FLAGS.cache_size,
    )
    if FLAGS.inputs:
        out = gen.generate(arrays, **gen_kw)
        write_npz(FLAGS.output, tokens=out.tokens.astype(np.int32))
        print(f"wrote tokens {out.tokens.shape} to {FLAGS.output}")
        return
    stop = tuple(
        t
        for t in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>"))
        if t is not None
    ) or (cfg.eos_token_id, cfg.bos_token_id)
    answer = stream_answer(gen, prompt, tokenizer, stop, gen_kw)
    report_grounding(answer, images)


if __name__ == "__main__":
    run(main, "generate")
