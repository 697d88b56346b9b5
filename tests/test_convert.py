"""hf_to_orbax / orbax_to_hf: bit-exact round trips, transformers loading the export, every
refused input with its message, atomic output, the CLIs, and the streaming memory bound."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from checkpoints_convert import ConversionError, hf_to_orbax, orbax_to_hf, parse_size
from checkpoints_convert.orbax_to_hf import LazyTensor, shard_plan, write_release
from checkpoints_convert.progress import run_measured
from qwen25vl_jax import checkpoint
from qwen25vl_jax.checkpoint import (
    ParamsReader,
    load_checkpoint,
    locate_params,
)
from qwen25vl_jax.config import ModelConfig, TextConfig, VisionConfig, from_hf_config
from qwen25vl_jax.hf_weights import RULES, expected_names, load_hf, stacked_shape, transpose2d
from qwen25vl_jax.safetensors_io import SafetensorsDir
from tests.cases import CASES, make_case
from tests.hf_reference import build_hf_model, hf_logits
from tests.test_parity_model import run_ours

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16 = np.dtype(ml_dtypes.bfloat16)
TINY = ModelConfig.tiny()


def random_release(path, cfg=TINY, *, dtype=BF16, seed=0, max_shard_bytes=1 << 40, drop=(),
                   extra=None, override=None, scale=1.0):  # fmt: skip
    """A released-layout directory with random tensors (numpy only, no torch)."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = [(n, *(override or {}).get(n, (r.hf_shape(cfg), dtype)))
             for r, _, n in expected_names(cfg) if n not in drop]  # fmt: skip
    specs += [(n, s, d) for n, (s, d) in (extra or {}).items()]
    rand = lambda s: scale * rng.standard_normal(s, np.float32)  # noqa: E731
    tensors = [(n, LazyTensor(s, d, lambda s=s: rand(s))) for n, s, d in specs]
    write_release(str(path), cfg, tensors, max_shard_bytes=max_shard_bytes)
    return str(path)


def assert_same_tensors(a_dir, b_dir):
    """Same names, shapes, dtypes and bytes."""
    a, b = SafetensorsDir(a_dir), SafetensorsDir(b_dir)
    assert sorted(a.keys()) == sorted(b.keys())
    for name in a.keys():
        x, y = a.get(name), b.get(name)
        assert (x.shape, x.dtype) == (y.shape, y.dtype), name
        assert x.tobytes() == y.tobytes(), name


def assert_no_leftovers(parent, name):
    hidden = [n for n in os.listdir(parent) if n.startswith(f".{name}.")]
    assert not hidden, hidden


def transformers_logits(path, cfg, arrays, dtype):
    """Logits of the directory loaded by transformers in `dtype`, computed in float32."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
    assert next(model.parameters()).dtype == dtype
    model.set_attn_implementation("eager")
    return hf_logits(model.float(), cfg, arrays)[0]


# ---- pieces ------------------------------------------------------------------------------------
def test_fast_transforms_match_the_table():
    """The table's transforms (blocked transposes) are the plain NumPy definitions of each kind
    and invert exactly."""
    rng = np.random.default_rng(0)
    for rule in RULES:
        x = rng.standard_normal(rule.hf_shape(TINY)).astype(np.float32)
        x2 = {"copy": x, "linear": x.T, "conv": x.reshape(x.shape[0], -1).T}[rule.kind]
        plain = x2.reshape(rule.our_shape(TINY))
        y = rule.to_ours(x, TINY)
        np.testing.assert_array_equal(y, plain)
        np.testing.assert_array_equal(rule.to_hf(y, TINY), x)
    x = rng.standard_normal((300, 517)).astype(BF16)  # not a multiple of the block
    assert transpose2d(x).tobytes() == np.ascontiguousarray(x.T).tobytes()


def test_sizes_and_shard_plan():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 << 30
    assert parse_size("500MB") == 5 * 10**8 and parse_size("100KB") == 10**5
    with pytest.raises(ConversionError, match="expected e.g. 5GB"):
        parse_size("lots")
    assert shard_plan([4, 4, 4, 9, 1], 8) == [0, 0, 1, 2, 3]


# ---- round trips -------------------------------------------------------------------------------
def test_round_trip_untied_float32_single_file(tiny, tmp_path):
    """transformers' single-file save -> Orbax -> sharded export: bit-exact; transformers and
    our model load the results and give the source's logits exactly."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    hf_to_orbax.convert(tiny.path, ck, progress=False)
    orbax_to_hf.export(ck, out, max_shard_size="60KB", progress=False)
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert_same_tensors(tiny.path, out)
    assert from_hf_config(out) == tiny.cfg
    assert (out / "generation_config.json").is_file()  # release assets travel along
    arrays = make_case(tiny.cfg, CASES["two_images"], seed=3)
    ref = hf_logits(tiny.torch, tiny.cfg, arrays)[0]
    np.testing.assert_array_equal(transformers_logits(out, tiny.cfg, arrays, torch.float32), ref)
    ours_ck = run_ours(load_checkpoint(ck)[0], tiny.cfg, arrays)[0]
    ours_hf = run_ours(load_hf(tiny.path)[0], tiny.cfg, arrays)[0]
    np.testing.assert_array_equal(ours_ck, ours_hf)


def test_round_trip_tied_bfloat16_sharded(tmp_path):
    cfg = ModelConfig.tiny(tie_word_embeddings=True)
    src, ck, out = tmp_path / "src", tmp_path / "ck", tmp_path / "hf"
    model = build_hf_model(cfg).to(torch.bfloat16)
    model.save_pretrained(src, max_shard_size="50KB")
    assert (src / "model.safetensors.index.json").is_file()
    hf_to_orbax.convert(src, ck, progress=False)
    reader = ParamsReader(locate_params(ck))
    assert "decoder/lm_head" not in reader.paths()
    assert {reader.dtype(p) for p in reader.paths()} == {BF16}
    orbax_to_hf.export(ck, out, progress=False)
    assert (out / "model.safetensors").is_file()
    assert_same_tensors(src, out)
    arrays = make_case(cfg, CASES["odd_image"], seed=1)
    ref = transformers_logits(src, cfg, arrays, torch.bfloat16)  # loaded alike: same buffers
    np.testing.assert_array_equal(transformers_logits(out, cfg, arrays, torch.bfloat16), ref)


def test_dtype_conversions_are_exact(tmp_path):
    """bfloat16 -> stored float32 -> exported bfloat16 gives back the source bytes."""
    src = random_release(tmp_path / "src")
    ck, out, out32 = tmp_path / "ck", tmp_path / "hf", tmp_path / "hf32"
    hf_to_orbax.convert(src, ck, dtype="float32", progress=False)
    reader = ParamsReader(locate_params(ck))
    assert {reader.dtype(p) for p in reader.paths()} == {np.dtype(np.float32)}
    orbax_to_hf.export(ck, out, dtype="bfloat16", progress=False)
    assert_same_tensors(src, out)
    orbax_to_hf.export(ck, out32, progress=False)  # keep: float32, same values
    a, b = SafetensorsDir(src), SafetensorsDir(out32)
    for name in a.keys():
        assert b.get(name).dtype == np.float32
        np.testing.assert_array_equal(a.get(name).astype(np.float32), b.get(name))
    assert json.loads((out32 / "config.json").read_text())["torch_dtype"] == "float32"


@pytest.mark.heavy
def test_round_trip_3b_widths_two_layers(tmp_path):
    """The released 3B widths (tied, bfloat16) with 2 layers per tower, sharded source: the
    622 MB embedding goes through the row-block path. transformers loads source and export
    alike and gives the same logits."""
    base = ModelConfig.qwen25vl_3b()
    cfg = ModelConfig(
        vision=VisionConfig(**{**base.vision.__dict__, "depth": 2, "fullatt_block_indexes": (1,)}),
        text=TextConfig(**{**base.text.__dict__, "num_layers": 2}),
    )
    src = random_release(tmp_path / "src", cfg, max_shard_bytes=400 * 10**6, scale=0.02)
    ck, out = tmp_path / "ck", tmp_path / "hf"
    hf_to_orbax.convert(src, ck, progress=False)
    orbax_to_hf.export(ck, out, max_shard_size="400MB", progress=False)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert_same_tensors(src, out)
    arrays = make_case(cfg, [[5, ("image", (1, 4, 6)), 7]], seed=2)
    ref = transformers_logits(src, cfg, arrays, torch.bfloat16)
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(transformers_logits(out, cfg, arrays, torch.bfloat16), ref)


def test_row_blocks_and_small_chunks(tmp_path, monkeypatch):
    """Unstacked tensors above SLAB_BYTES / BLOCK_BYTES are written and read in row blocks
    aligned to the storage chunks (embedding: copy kind; lm_head, merger: linear): bit-exact."""
    monkeypatch.setattr(hf_to_orbax, "SLAB_BYTES", 3000)
    monkeypatch.setattr(orbax_to_hf, "BLOCK_BYTES", 3000)
    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 2048)
    src = random_release(tmp_path / "src", dtype=np.dtype(np.float32))
    ck, out = tmp_path / "ck", tmp_path / "hf"
    hf_to_orbax.convert(src, ck, progress=False)
    plan, reader = hf_to_orbax.plan(src), ParamsReader(locate_params(ck))
    for path in ("decoder/embed", "decoder/lm_head", "visual/merger/fc1_kernel"):
        chunk = reader.array(path).chunk_layout.write_chunk.shape
        blocks = list(hf_to_orbax.slabs(plan, hf_to_orbax._rule(path), np.float32, align=chunk))
        assert len(blocks) > 3, path
    orbax_to_hf.export(ck, out, progress=False)
    assert_same_tensors(src, out)


def test_score_checkpoint_equals_hf_dir(tiny, tmp_path):
    ck = hf_to_orbax.convert(tiny.path, tmp_path / "ck", progress=False)
    np.savez(tmp_path / "x.npz", **make_case(tiny.cfg, CASES["image_and_video"], seed=4))
    logits = {}
    for flag, path in (("--hf_dir", tiny.path), ("--checkpoint", ck)):
        y = tmp_path / f"y{flag}.npz"
        cmd = [sys.executable, "-m", "experiments.score", f"{flag}={path}",
               f"--inputs={tmp_path / 'x.npz'}", f"--output={y}"]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        logits[flag] = np.load(y)["logits"]
    np.testing.assert_array_equal(logits["--hf_dir"], logits["--checkpoint"])


# ---- refusals ----------------------------------------------------------------------------------
def _rewrite_header(path, fn):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = fn(json.loads(raw[8 : 8 + n]))
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _edit_config(d, **kv):
    cfg = json.loads(Path(d, "config.json").read_text())
    for k, v in kv.items():
        node, *path = k.split("__")
        target = cfg if not path else cfg[node]
        key = path[-1] if path else node
        if v is None:
            target.pop(key)
        else:
            target[key] = v
    Path(d, "config.json").write_text(json.dumps(cfg))


def _truncate(d):
    f = f"{d}/model.safetensors"
    os.truncate(f, os.path.getsize(f) - 100)


def _corrupt_header(d):
    with open(f"{d}/model.safetensors", "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 16)


def _pickled_only(d):
    os.remove(f"{d}/model.safetensors")
    Path(d, "pytorch_model.bin").write_bytes(b"never unpickled")


def _remove_second_shard(d):
    (second,) = [f for f in os.listdir(d) if f.startswith("model-00002-of-")]
    os.remove(os.path.join(d, second))


def _fp8_code(d):
    def fn(h):
        h["model.norm.weight"]["dtype"] = "F8_E4M3"
        return h

    _rewrite_header(f"{d}/model.safetensors", fn)


Q0 = "model.layers.0.self_attn.q_proj.weight"
REFUSALS = {
    "missing_tensor": (dict(drop={"model.layers.1.mlp.up_proj.weight"}), None,
                       r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"),
    "unexpected_tensor": (dict(extra={"model.layers.2.mlp.up_proj.weight": ((70, 48), BF16)}),
                          None, r"unexpected tensors: model\.layers\.2\.mlp\.up_proj\.weight"),
    "shape_mismatch": (dict(override={Q0: ((48, 47), BF16)}), None,
                       rf"model\.safetensors: tensor '{Q0}': shape \(48, 47\), but "
                       r"\S*config\.json implies \(48, 48\)"),
    "config_inconsistent_with_tensors": ({}, lambda d: _edit_config(d, intermediate_size=72),
                                         r"model\.safetensors: tensor 'model\.layers\.0\.mlp\."
                                         r"gate_proj\.weight': shape \(70, 48\), but \S*config"
                                         r"\.json implies \(72, 48\)"),
    "config_inconsistent_in_itself": ({}, lambda d: _edit_config(
                                          d, vision_config__out_hidden_size=50),
                                      r"config\.json: vision out_hidden_size 50 != text "
                                      r"hidden_size 48"),
    "config_missing_field": ({}, lambda d: _edit_config(d, vocab_size=None),
                             r"config\.json: missing field 'vocab_size'"),
    "config_not_json": ({}, lambda d: Path(d, "config.json").write_text("{"),
                        r"config\.json: not valid JSON"),
    "config_wrong_model": ({}, lambda d: _edit_config(d, model_type="llama"),
                           r"config\.json: model_type 'llama' is not 'qwen2_5_vl'"),
    "config_missing": ({}, lambda d: os.remove(f"{d}/config.json"),
                       r"config\.json: no config\.json"),
    "unsupported_dtype": (dict(override={"model.norm.weight": ((48,), np.dtype(np.int32))}), None,
                          r"model\.safetensors: tensor 'model\.norm\.weight': unsupported dtype "
                          r"int32"),
    "unknown_dtype_code": ({}, _fp8_code, r"model\.safetensors: tensor 'model\.norm\.weight': "
                           r"unsupported dtype F8_E4M3"),
    "layer_dtypes_differ": (dict(override={"model.layers.1.input_layernorm.weight":
                                           ((48,), np.dtype(np.float32))}), None,
                            r"tensor 'model\.layers\.1\.input_layernorm\.weight': dtype float32 "
                            r"differs from 'model\.layers\.0\.input_layernorm\.weight'"),
    "truncated": ({}, _truncate, r"model\.safetensors: tensor '[\w.]+': truncated file"),
    "corrupt_header": ({}, _corrupt_header, r"model\.safetensors: corrupt header"),
    "pickled_only": ({}, _pickled_only, r"only pickled weights \(pytorch_model\.bin\); convert "
                     r"them to safetensors first \(loading pickles runs arbitrary code"),
    "index_names_missing_shard": (dict(max_shard_bytes=60_000),
                                  _remove_second_shard,
                                  r"model\.safetensors\.index\.json: tensor '[\w.]+' is in "
                                  r"missing file model-00002-of-0000\d\.safetensors"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_sources_name_file_and_tensor(tmp_path, case):
    kwargs, mutate, pattern = REFUSALS[case]
    src = random_release(tmp_path / "src", **kwargs)
    if mutate:
        mutate(src)
    with pytest.raises(ConversionError, match=pattern):
        hf_to_orbax.convert(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert_no_leftovers(tmp_path, "out")


def test_existing_output_refused_then_overwritten(tmp_path):
    src, out = random_release(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match=r"out: already exists; pass --overwrite"):
        hf_to_orbax.convert(src, out, progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(ConversionError, match="is or contains the source"):
        hf_to_orbax.convert(src, tmp_path, overwrite=True, progress=False)
    hf_to_orbax.convert(src, out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and load_checkpoint(out)[1] == TINY
    with pytest.raises(ConversionError, match="already exists"):
        orbax_to_hf.export(out, src, progress=False)
    assert_no_leftovers(tmp_path, "out")


def test_failure_midway_leaves_no_checkpoint(tmp_path, monkeypatch):
    src, out = random_release(tmp_path / "src"), tmp_path / "out"
    hf_to_orbax.convert(src, out, progress=False)  # a previous good checkpoint, overwritten below
    real, calls = hf_to_orbax._write_rule, []

    def failing(p, rule, writer, *a):
        calls.append(rule.path)
        if len(calls) == 5:  # the half-written directory is not a checkpoint
            with pytest.raises(ValueError, match="incomplete checkpoint"):
                locate_params(os.path.dirname(writer.dir))
            raise RuntimeError("disk on fire")
        return real(p, rule, writer, *a)

    monkeypatch.setattr(hf_to_orbax, "_write_rule", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        hf_to_orbax.convert(src, out, overwrite=True, progress=False)
    assert_no_leftovers(tmp_path, "out")
    assert load_checkpoint(out)[1] == TINY  # the old checkpoint is untouched

    real_write, count = orbax_to_hf.write_safetensors, []

    def failing_write(*a, **k):
        count.append(1)
        if len(count) == 2:
            raise OSError("disk full")
        return real_write(*a, **k)

    monkeypatch.setattr(orbax_to_hf, "write_safetensors", failing_write)
    with pytest.raises(OSError, match="disk full"):
        orbax_to_hf.export(out, tmp_path / "hf", max_shard_size="60KB", progress=False)
    assert not (tmp_path / "hf").exists()
    assert_no_leftovers(tmp_path, "hf")


# ---- the programs ------------------------------------------------------------------------------
def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_command_lines(tmp_path):
    src, ck, out = random_release(tmp_path / "src"), tmp_path / "ck", tmp_path / "hf"
    p = _run("checkpoints_convert.hf_to_orbax", f"--hf_dir={src}", f"--output_dir={ck}")
    assert p.returncode == 0, p.stderr
    assert "MB/s" in p.stderr and "tensors" in p.stderr  # the progress line
    p = _run("checkpoints_convert.orbax_to_hf", f"--checkpoint={ck}", f"--output_dir={out}",
             "--max_shard_size=100KB", "--dtype=float32")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["output_dir"] == str(out)
    assert SafetensorsDir(out).get("model.norm.weight").dtype == np.float32
    p = _run("checkpoints_convert.hf_to_orbax", f"--hf_dir={src}", f"--output_dir={ck}")
    assert p.returncode == 2
    assert "hf_to_orbax: error:" in p.stderr and "already exists" in p.stderr
    assert "Traceback" not in p.stderr


# ---- memory ------------------------------------------------------------------------------------
MANY = ModelConfig(
    vision=VisionConfig(depth=8, hidden_size=256, intermediate_size=1024, num_heads=4,
                        fullatt_block_indexes=(3, 7), out_hidden_size=512),
    text=TextConfig(vocab_size=8192, hidden_size=512, intermediate_size=2048, num_layers=64,
                    num_heads=8, num_kv_heads=2, head_dim=64, mrope_section=(8, 12, 12)),
)  # fmt: skip


@pytest.mark.heavy
def test_streaming_peak_memory(tmp_path):
    """Peak RSS above the interpreter's own stays under 2x the largest stacked parameter plus
    64 MiB both ways, and under half the model: nothing holds the whole model."""
    src = random_release(tmp_path / "src", MANY, max_shard_bytes=100 << 20)
    sizes = [int(np.prod(stacked_shape(r, MANY))) * BF16.itemsize for r in RULES if r.when(MANY)]
    total, largest = sum(sizes), max(sizes)
    base = run_measured([sys.executable, "-c", "import checkpoints_convert.hf_to_orbax, "
                         "checkpoints_convert.orbax_to_hf"])["peak_rss"]  # fmt: skip
    ck, out = tmp_path / "ck", tmp_path / "hf"
    runs = {
        "hf_to_orbax": run_measured([sys.executable, "-m", "checkpoints_convert.hf_to_orbax",
                                     f"--hf_dir={src}", f"--output_dir={ck}"]),
        "orbax_to_hf": run_measured([sys.executable, "-m", "checkpoints_convert.orbax_to_hf",
                                     f"--checkpoint={ck}", f"--output_dir={out}"]),
    }  # fmt: skip
    for name, r in runs.items():
        extra = r["peak_rss"] - base
        print(f"{name}: model {total / 2**20:.0f} MiB, largest stack {largest / 2**20:.0f} MiB, "
              f"peak RSS +{extra / 2**20:.0f} MiB over {base / 2**20:.0f} MiB, "
              f"{total / r['wall_s'] / 1e6:.0f} MB/s with start-up")  # fmt: skip
        assert r["returncode"] == 0, r["stderr"][-2000:]
        assert extra < 2 * largest + (64 << 20), name
        assert extra < total / 2, name
    assert_same_tensors(src, out)
