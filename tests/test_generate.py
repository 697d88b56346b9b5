"""Generation against transformers' `generate` on the random tiny model (float32), compile
counts, sampling, stop tokens, the bf16 cache, the CLI's parity mode, and an 8-device mesh.

Random models tie often (top-2 logits within float32 noise), and at a tie the two
implementations may rightly pick different tokens; tokens are compared up to the first step
whose reference top-2 margin is below `TIE` (logits up to and including it), and each case
checks that this prefix is long enough for the comparison to mean something.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen25vl_jax.inference import Generator, Sampling, generate, warp_logits
from qwen25vl_jax.inference.prompt_batch import geometric_bucket, prepare_batch
from qwen25vl_jax.model.options import RunOptions
from tests.cases import CASES, make_case, make_samples
from tests.fake_devices import run_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_NEW = 12
TIE = 1e-4
LOGIT_TOL = 1e-5
BF16_TOL = 4e-3  # logits with a bf16 KV cache (float32 compute) differ by about 1e-3

GREEDY_CASES = {
    "one_image": CASES["odd_image"],
    "video": CASES["video_0.5"],
    "batch2_left_pad": CASES["batch2_left_pad"],
    "text_only": CASES["text_only"],
}


@pytest.fixture(scope="module")
def gen(tiny):
    # fixed ViT buckets of 256 slots: the image and the video cases share one compiled prefill
    return Generator(tiny.jax, patch_bucket=256)


def hf_generate(tiny, arrays, n, stop, pad):
    """transformers' greedy `generate`: (tokens int[B, n] padded with `pad`, logits [B, s, V])."""
    import torch  # here, not at the top: the mesh subprocess should not pay for torch

    from tests.hf_reference import hf_inputs_to_torch

    kw = hf_inputs_to_torch(tiny.cfg, arrays)
    with torch.no_grad():
        out = tiny.torch.generate(
            **kw, max_new_tokens=n, do_sample=False, eos_token_id=list(stop) or None,
            pad_token_id=pad, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    new = out.sequences[:, arrays["input_ids"].shape[1] :].numpy()
    tokens = np.full((new.shape[0], n), pad, np.int64)
    tokens[:, : new.shape[1]] = new
    return tokens, torch.stack(out.logits, 1).float().numpy()


def first_near_tie(logits: np.ndarray, tie: float = TIE) -> int:
    """The first step at which some row's top-2 logits are within `tie` (or the step count)."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    close = ((top2[..., 1] - top2[..., 0]) < tie).any(0)
    return int(close.argmax()) if close.any() else logits.shape[1]


@pytest.mark.parametrize("case", sorted(GREEDY_CASES))
def test_greedy_tokens_and_logits_match_transformers(tiny, gen, case):
    cfg = tiny.cfg
    stop, pad = (cfg.eos_token_id, cfg.bos_token_id), cfg.bos_token_id
    arrays = make_case(cfg, GREEDY_CASES[case], seed=3)
    ref_tokens, ref_logits = hf_generate(tiny, arrays, N_NEW, stop, pad)
    out = gen.generate(arrays, max_new_tokens=N_NEW, return_logits=True)
    t = first_near_tie(ref_logits)
    assert t >= 6, f"reference ties at step {t}: the comparison would be vacuous"
    np.testing.assert_array_equal(out.tokens[:, :t], ref_tokens[:, :t])
    steps = min(t + 1, ref_logits.shape[1])
    diff = np.abs(out.logits[:, :steps] - ref_logits[:, :steps]).max()
    assert diff <= LOGIT_TOL, f"max |dlogits| {diff:.2e} over {steps} steps"


def test_one_compile_per_bucket_and_stream_equals_loop(tiny):
    gen = Generator(tiny.jax, length_bucket=64)
    # batch 3: a shape no other test uses, so the first call compiles exactly once
    short = make_case(tiny.cfg, [[20], [11], [5]], seed=5)
    long = make_case(tiny.cfg, [[45], [3], [30]], seed=6)
    # compiles so far of each jitted entry point (jit's cache holds one entry per compile)
    compiled = lambda: {n: getattr(generate, f"{n}_fn")._cache_size()  # noqa: E731
                        for n in ("prefill", "decode_step", "decode_loop")}  # fmt: skip
    before = compiled()
    delta = lambda name: compiled()[name] - before[name]  # noqa: E731
    out_short = gen.generate(short, max_new_tokens=10, stop_tokens=())
    gen.generate(long, max_new_tokens=30, stop_tokens=(), pad_token=3)  # same bucket
    assert (delta("prefill"), delta("decode_loop")) == (1, 1), compiled()
    streamed = np.stack(list(gen.stream(short, max_new_tokens=10, stop_tokens=())), axis=1)
    list(gen.stream(long, max_new_tokens=20, stop_tokens=(5,)))  # no new decode step either
    assert (delta("prefill"), delta("decode_step")) == (1, 1), compiled()
    np.testing.assert_array_equal(streamed, out_short.tokens)
    assert out_short.prompt_len == 64


def test_prompts_are_bucketed_and_left_aligned(tiny, gen):
    assert [geometric_bucket(n) for n in (1, 2, 3, 5, 7, 9, 13, 17, 33)] == [
        1, 2, 3, 6, 8, 12, 16, 24, 48,
    ]  # fmt: skip
    cfg = tiny.cfg
    batch = prepare_batch(cfg, make_samples(cfg, CASES["two_images"], seed=1))
    wp = cfg.vision.window_patches
    assert batch.prompt_len == 64 and batch.inputs.patches.shape[1] in {
        geometric_bucket(n) * wp for n in range(1, 99)
    }
    kw = dict(max_new_tokens=N_NEW, return_logits=True)
    left = gen.generate(make_case(cfg, CASES["text_only"], seed=3), **kw)
    right = gen.generate(make_case(cfg, CASES["text_only"], seed=3, pad="right"), **kw)
    np.testing.assert_array_equal(left.tokens, right.tokens)


def test_warpers_match_transformers():
    import torch
    from transformers.generation import logits_process as lp

    logits = np.random.default_rng(0).standard_normal((6, 97)).astype(np.float32) * 3
    configs = [(0.7, 0, 0.8), (1.3, 9, 1.0), (1.0, 20, 0.5), (0.5, 0, 1.0), (2.0, 1, 1.0)]
    for temperature, top_k, top_p in configs:
        ref = torch.from_numpy(logits)
        ref = lp.TemperatureLogitsWarper(temperature)(None, ref)
        if top_k:
            ref = lp.TopKLogitsWarper(top_k)(None, ref)
        if top_p < 1:
            ref = lp.TopPLogitsWarper(top_p)(None, ref)
        ours = np.asarray(warp_logits(jnp.asarray(logits), Sampling(temperature, top_k, top_p)))
        ref = ref.numpy()
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
        np.testing.assert_allclose(ours[np.isfinite(ours)], ref[np.isfinite(ref)], rtol=1e-6)


def test_sampling_is_reproducible_from_the_seed(tiny, gen):
    arrays = make_case(tiny.cfg, CASES["text_only"], seed=7)
    kw = dict(max_new_tokens=10, stop_tokens=(), return_logits=True)
    hot = Sampling(temperature=1.5, top_k=50, top_p=0.95)
    first = gen.generate(arrays, sampling=hot, key=1, **kw).tokens
    np.testing.assert_array_equal(gen.generate(arrays, sampling=hot, key=1, **kw).tokens, first)
    streamed = np.stack(list(gen.stream(arrays, sampling=hot, key=1, **kw)), axis=1)
    np.testing.assert_array_equal(streamed, first)
    other = gen.generate(arrays, sampling=hot, key=2, **kw).tokens
    assert (other != first).any(), "another seed gave the same 20 sampled tokens"
    greedy = gen.generate(arrays, **kw).tokens
    assert (first != greedy).any(), "temperature 1.5 sampling gave the greedy tokens"


def test_stop_tokens_end_rows_independently(tiny, gen):
    arrays = make_case(tiny.cfg, CASES["text_only"], seed=11)
    kw = dict(max_new_tokens=10, return_logits=True)
    free = gen.generate(arrays, stop_tokens=(), **kw).tokens
    # a token row 0 emits at step k (for the first time) and row 1 never emits
    k = next(k for k in range(2, 10) if free[0, k] not in free[1] and free[0, k] not in free[0, :k])
    stop, pad = int(free[0, k]), 7
    out = gen.generate(arrays, stop_tokens=(stop,), pad_token=pad, **kw)
    np.testing.assert_array_equal(out.tokens[0, : k + 1], free[0, : k + 1])
    assert (out.tokens[0, k + 1 :] == pad).all()
    np.testing.assert_array_equal(out.tokens[1], free[1])
    np.testing.assert_array_equal(out.num_tokens, [k + 1, 10])
    ref, _ = hf_generate(tiny, arrays, 10, (stop,), pad)
    np.testing.assert_array_equal(out.tokens, ref)
    # once every row is done the loop ends early
    both = gen.generate(arrays, stop_tokens=(stop, int(free[1, 1])), pad_token=pad, **kw)
    assert both.steps == max(both.num_tokens) < 10
    assert (both.tokens[:, both.steps :] == pad).all()


def test_bf16_cache_close_to_float32(tiny, gen):
    arrays = make_case(tiny.cfg, CASES["text_only"], seed=3)
    kw = dict(max_new_tokens=N_NEW, return_logits=True)
    ref = gen.generate(arrays, **kw)
    bf16 = Generator(tiny.jax, cache_dtype=jnp.bfloat16)
    out = bf16.generate(arrays, **kw)
    t = first_near_tie(ref.logits, tie=BF16_TOL)
    assert t >= 4
    np.testing.assert_array_equal(out.tokens[:, :t], ref.tokens[:, :t])
    assert np.abs(out.logits[:, : t + 1] - ref.logits[:, : t + 1]).max() < BF16_TOL / 2
    ds, _, _ = bf16.start(arrays, max_new_tokens=N_NEW, return_logits=True)
    assert ds.cache.k.dtype == jnp.bfloat16 and ds.cache.k.shape[2] == tiny.cfg.text.num_kv_heads


def test_cli_parity_mode_writes_the_reference_tokens(tiny, tmp_path):
    cfg = tiny.cfg
    arrays = make_case(cfg, CASES["batch2_left_pad"], seed=3)
    np.savez(tmp_path / "in.npz", **arrays)
    cmd = [sys.executable, "-m", "experiments.generate", f"--hf_dir={tiny.path}",
           f"--inputs={tmp_path / 'in.npz'}", f"--output={tmp_path / 'out.npz'}",
           f"--max_new_tokens={N_NEW}"]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(tmp_path / "out.npz", allow_pickle=False) as f:
        tokens = f["tokens"]
    ref, logits = hf_generate(tiny, arrays, N_NEW, (cfg.eos_token_id, cfg.bos_token_id),
                              cfg.bos_token_id)  # fmt: skip
    assert tokens.shape == (2, N_NEW) and tokens.dtype == np.int32
    t = first_near_tie(logits)
    assert t >= 6, f"reference ties at step {t}: the comparison would be vacuous"
    np.testing.assert_array_equal(tokens[:, :t], ref[:, :t])


# ---- the same tokens on an 8-device mesh (a subprocess: XLA_FLAGS precede jax's import) ------
def mesh_child(hf_dir: str, case_file: str) -> int:
    """Generates the case on a (data 2, fsdp 2, tensor 2) mesh; compares with its `expected`
    single-device tokens over the first `steps` steps."""
    from qwen25vl_jax.hf_weights import load_hf
    from qwen25vl_jax.sharding import make_mesh

    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    model, _ = load_hf(hf_dir)
    with np.load(case_file, allow_pickle=False) as f:
        case = {k: f[k] for k in f.files}
    expected, steps = case.pop("expected"), int(case.pop("steps"))
    sharded = Generator(model, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    out = sharded.generate(case, max_new_tokens=expected.shape[1])
    ds, _, _ = sharded.start(case, max_new_tokens=2)
    spec = tuple(ds.cache.k.sharding.spec) + (None,) * 5
    same = bool((out.tokens[:, :steps] == expected[:, :steps]).all())
    print(f"cache spec {spec[:5]}; tokens equal over {steps} steps: {same}")
    return 0 if same and spec[1:3] == ("data", "tensor") else 1


def test_mesh_gives_the_single_device_tokens(tiny, gen, tmp_path):
    arrays = make_case(tiny.cfg, CASES["batch2_left_pad"], seed=3)  # one image per row
    single = gen.generate(arrays, max_new_tokens=N_NEW, return_logits=True)
    steps = first_near_tie(single.logits)
    assert steps >= 6
    np.savez(tmp_path / "case.npz", expected=single.tokens, steps=steps, **arrays)
    out = run_module("tests.test_generate", str(tiny.path), str(tmp_path / "case.npz"))
    assert "tokens equal" in out


def test_weights_held_in_the_compute_dtype(tiny):
    # a bf16 generator holds bf16 weights (decode reads half the bytes, converts nothing) and
    # produces exactly what casting float32 weights at every use produces
    arrays = make_case(tiny.cfg, CASES["text_only"], seed=3)
    kw = dict(max_new_tokens=6, return_logits=True)
    opts = RunOptions(dtype=jnp.bfloat16)
    held = Generator(tiny.jax, opts=opts)
    per_use = Generator(tiny.jax, opts=opts, weights_dtype=jnp.float32)
    dtypes = {a.dtype for a in jax.tree.leaves(held.state) if jnp.issubdtype(a.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    a, b = held.generate(arrays, **kw), per_use.generate(arrays, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logits, b.logits)


if __name__ == "__main__":
    sys.exit(mesh_child(*sys.argv[1:3]))
