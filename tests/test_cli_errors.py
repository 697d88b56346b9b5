"""Every command-line tool, given bad input, exits with status 2 and one line naming the file /
record / array and the reason: no traceback, nothing half-written, no hang.

Each case is a subprocess; they run a few at a time (most fail before JAX loads) against one set
of files built once: the session's tiny Hugging Face directory (`conftest.tiny`), .npz files,
images, JSONL records, a small tokenizer with a matching random checkpoint. The table is also
BUILD_NOTES' "bad input" matrix; converter, batch-split and precision checks: test_cli_safety.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from qwen25vl_jax.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ModelConfig.tiny()  # the `tiny` fixture's config (vocabulary 211, patch rows 1176 wide)
HANG_LIMIT_S = 600  # the all-bad-records case must stop by itself well within this


@dataclasses.dataclass(frozen=True)
class Case:
    module: str
    args: tuple[str, ...]
    message: str  # regex the one error line must match
    absent: str | None = None  # an output path that must not exist afterwards
    status: int = 2
    timeout: int = 300


def npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """Paths of every input the cases use (the tiny HF directory's vocabulary is 211)."""
    from flax import nnx
    from PIL import Image

    from experiments import synthetic_tasks
    from experiments.configs import demo
    from qwen25vl_jax.checkpoint import save_params
    from qwen25vl_jax.data.records import decode_record, parse_record
    from qwen25vl_jax.data.small_vocab import (
        build_small_tokenizer,
        chat_texts,
        model_token_ids,
        save_small_tokenizer,
    )
    from qwen25vl_jax.model.qwen25vl import Qwen25VL

    d = tmp_path_factory.mktemp("cli")
    f = {"hf": str(tiny.path), "d": str(d)}
    ids = np.array([[1, 2, 3, 4]])
    f["ids_1d"] = npz(d / "ids_1d.npz", input_ids=np.arange(4))
    f["ids_float"] = npz(d / "ids_float.npz", input_ids=np.ones((1, 4), np.float32))
    f["ids_big"] = npz(d / "ids_big.npz", input_ids=np.array([[1, 2, 211, 4]]))
    f["ids_neg"] = npz(d / "ids_neg.npz", input_ids=np.array([[1, -1, 3]]))
    f["mask_shape"] = npz(d / "mask_shape.npz", input_ids=ids, attention_mask=np.ones((1, 3), int))
    f["unknown"] = npz(d / "unknown.npz", input_ids=ids, pixels=np.zeros(3))
    f["pickled"] = npz(d / "pickled.npz", input_ids=np.array([[1, 2]], dtype=object))
    img_ids = np.array([[1, *[TINY.image_token_id] * 4, 2]])  # 4 tokens = one 1x4x4 grid
    grid = np.array([[1, 4, 4]])
    pix = np.zeros((16, 1176), np.float32)
    f["img_no_grid"] = npz(d / "img_no_grid.npz", input_ids=img_ids)
    f["vid_no_grid"] = npz(d / "vid_no_grid.npz", input_ids=np.array([[1, TINY.video_token_id]]))
    f["grid_no_pix"] = npz(d / "grid_no_pix.npz", input_ids=img_ids, image_grid_thw=grid)
    f["pix_width"] = npz(d / "pix_width.npz", input_ids=img_ids, image_grid_thw=grid,
                         pixel_values=np.zeros((16, 1000), np.float32))  # fmt: skip
    f["pix_rows"] = npz(d / "pix_rows.npz", input_ids=img_ids, image_grid_thw=grid,
                        pixel_values=pix[:3])  # fmt: skip
    f["tokens_grid"] = npz(d / "tokens_grid.npz", input_ids=img_ids[:, :4], image_grid_thw=grid,
                           pixel_values=pix)  # fmt: skip
    f["good"] = npz(d / "good.npz", input_ids=ids)
    (d / "text.npz").write_text("not a zip archive")
    f["not_npz"] = str(d / "text.npz")
    os.makedirs(d / "config_only")
    with open(os.path.join(tiny.path, "config.json")) as src:
        (d / "config_only" / "config.json").write_text(src.read())
    f["config_only"] = str(d / "config_only")
    Image.new("RGB", (40, 30), "red").save(d / "good.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    f["good_png"], f["corrupt_png"] = str(d / "good.png"), str(d / "corrupt.png")
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)
    f["corrupt_mp4"] = str(d / "corrupt.mp4")
    (d / "a_file").write_text("x")
    f["a_file"] = str(d / "a_file")

    # records, a small tokenizer and a random checkpoint of a model with its vocabulary
    data = synthetic_tasks.generate(str(d / "data"), num_train=4, num_eval=3, seed=5)
    with open(data["train"]) as src:
        convs = [parse_record(decode_record(ln, "t"), "t").messages for ln in src]
    tok = build_small_tokenizer(chat_texts(convs))
    f["tok"] = str(save_small_tokenizer(tok, d / "tok"))
    f["vocab"] = str(tok.get_vocab_size())
    overrides = demo.get_config().model.overrides.to_dict()  # the demo's model, one layer
    overrides["text"].update(vocab_size=tok.get_vocab_size(), num_layers=1)
    cfg = ModelConfig.preset("tiny", overrides)
    assert {k: getattr(cfg, k) for k in model_token_ids(tok)} == model_token_ids(tok)
    f["ckpt"] = save_params(d / "ckpt", Qwen25VL(cfg, rngs=nnx.Rngs(0)), cfg)
    f["train_jsonl"], f["media_root"] = data["train"], data["media_root"]
    bad = {"messages": [{"role": "bogus", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    (d / "all_bad.jsonl").write_text((json.dumps(bad) + "\n") * 3)
    f["all_bad"] = str(d / "all_bad.jsonl")
    (d / "worker_bad.jsonl").write_text((json.dumps(bad) + "\n") * 2)
    f["worker_bad"] = str(d / "worker_bad.jsonl")
    # evaluation: the first record's image deleted (a counted skip); a malformed record
    with open(data["eval"]) as src:
        rows = [json.loads(line) for line in src]
    missing = rows[0]["images"][0] if rows[0].get("images") else rows[0]["videos"][0]
    missing = missing if isinstance(missing, str) else missing["path"]
    os.remove(os.path.join(data["media_root"], missing))
    f["eval_jsonl"], f["eval_missing"] = data["eval"], os.path.basename(missing)
    (d / "eval_bad.jsonl").write_text('{"messages": "not a list"}\n')
    f["eval_bad"] = str(d / "eval_bad.jsonl")
    return f


def cases(f) -> dict[str, Case]:
    hf, d = f["hf"], f["d"]
    out = f"{d}/out.npz"
    score = lambda inputs, *a: Case(
        "experiments.score",
        (f"--hf_dir={hf}", f"--inputs={inputs}", f"--output={out}", *a),
        "",
        out,
    )  # noqa: E731
    train_common = ("--config=experiments/configs/stage2_full.py:tiny", "--config.train.steps=2",
                    f"--config.model.init_checkpoint={f['ckpt']}",
                    f"--config.data.tokenizer_dir={f['tok']}",
                    f"--config.data.media_root={f['media_root']}")  # fmt: skip
    train = lambda run, *a: ("experiments.train", (f"--workdir={d}/{run}", *train_common, *a))  # noqa: E731
    evaluate = lambda *a: (
        "experiments.eval",
        (
            f"--checkpoint={f['ckpt']}",  # noqa: E731
            f"--tokenizer_dir={f['tok']}",
            *a,
        ),
    )
    gen = lambda *a: ("experiments.generate", (f"--hf_dir={hf}", *a))  # noqa: E731
    small = str(int(f["vocab"] or 1) - 1)  # a vocabulary one token short of the tokenizer's
    w = lambda name: f"{d}/{name}"  # noqa: E731  a workdir per case: they run in parallel
    table = {
        # score: files and flags
        "score_no_inputs": Case("experiments.score", (f"--hf_dir={hf}",), r"--inputs is required"),
        "score_two_sources": Case("experiments.score", (f"--hf_dir={hf}", f"--checkpoint={hf}",
                                  f"--inputs={f['good']}", f"--output={out}"),
                                  r"exactly one of --hf_dir and --checkpoint", out),
        "score_missing_hf_dir": Case("experiments.score", (f"--hf_dir={d}/nope",
                                     f"--inputs={f['good']}", f"--output={out}"),
                                     rf"{d}/nope: no config\.json", out),
        "score_missing_checkpoint": Case("experiments.score", (f"--checkpoint={d}/nockpt",
                                         f"--inputs={f['good']}", f"--output={out}"),
                                         rf"{d}/nockpt: no such checkpoint directory", out),
        "score_missing_weights": Case("experiments.score", (f"--hf_dir={f['config_only']}",
                                      f"--inputs={f['good']}", f"--output={out}"),
                                      rf"{f['config_only']}.*(safetensors|weights)", out),
        "score_missing_inputs": score(f"{d}/none.npz"),
        "score_not_npz": score(f["not_npz"]),
        "score_pickled_npz": score(f["pickled"]),
        "score_output_dir_missing": Case("experiments.score", (f"--hf_dir={hf}",
                                         f"--inputs={f['good']}", f"--output={d}/no/o.npz"),
                                         rf"{d}/no/o\.npz: output directory {d}/no does not "
                                         r"exist"),
        # score: arrays
        "score_ids_1d": score(f["ids_1d"]),
        "score_ids_float": score(f["ids_float"]),
        "score_id_over_vocab": score(f["ids_big"]),
        "score_id_negative": score(f["ids_neg"]),
        "score_mask_shape": score(f["mask_shape"]),
        "score_unknown_array": score(f["unknown"]),
        "score_image_tokens_no_grid": score(f["img_no_grid"]),
        "score_video_tokens_no_grid": score(f["vid_no_grid"]),
        "score_grid_no_pixels": score(f["grid_no_pix"]),
        "score_pixel_width": score(f["pix_width"]),
        "score_pixel_rows": score(f["pix_rows"]),
        "score_tokens_vs_grid": score(f["tokens_grid"]),
        # generate
        "generate_missing_image": Case(*gen(f"--image={d}/none.jpg"), rf"--image {d}/none\.jpg: "
                                       r"no such file"),
        "generate_corrupt_image": Case(*gen(f"--image={f['corrupt_png']}"),
                                       rf"--image {f['corrupt_png']}: cannot decode the image"),
        "generate_missing_video": Case(*gen(f"--video={d}/none.mp4"), rf"--video {d}/none\.mp4: "
                                       r"no such file"),
        "generate_corrupt_video": Case(*gen(f"--video={f['corrupt_mp4']}",
                                            f"--tokenizer_dir={f['tok']}"),
                                       rf"--video {f['corrupt_mp4']}: cannot decode the video"),
        "generate_no_tokenizer": Case(*gen(f"--image={f['good_png']}"),
                                      r"no tokenizer at .*; or pass --tokenizer_dir"),
        "generate_prompt_over_vocab": Case(*gen(f"--image={f['good_png']}",
                                                f"--tokenizer_dir={f['tok']}"),
                                           r"the prompt .*'input_ids' holds token id \d+, "
                                           r"outside the model's vocabulary \[0, 211\)"),
        "generate_draw_dir_missing": Case(*gen(f"--image={f['good_png']}",
                                               f"--draw={d}/no/boxes.png"),
                                          rf"{d}/no/boxes\.png: output directory"),
        "generate_inputs_no_output": Case(*gen(f"--inputs={f['good']}"),
                                          r"--inputs and --output go together"),
        "generate_parity_over_vocab": Case(*gen(f"--inputs={f['ids_big']}", f"--output={out}"),
                                           r"ids_big\.npz: 'input_ids' holds token id 211", out),
        "generate_parity_image_no_grid": Case(*gen(f"--inputs={f['img_no_grid']}",
                                                   f"--output={out}"),
                                              r"'input_ids' holds 4 image tokens but there is "
                                              r"no 'image_grid_thw'", out),
        "generate_parity_output_dir": Case(*gen(f"--inputs={f['good']}",
                                                f"--output={d}/no/t.npz"),
                                           r"output directory .* does not exist"),
        "generate_missing_checkpoint": Case("experiments.generate", (f"--checkpoint={d}/nockpt",
                                            f"--image={f['good_png']}"),
                                            r"nockpt: no such checkpoint directory"),
        # train (a workdir per case: they run in parallel; none may be left behind)
        "train_no_config": Case("experiments.train", (f"--workdir={w('nc')}",),
                                r"--config is required", w("nc")),
        "train_config_file_missing": Case("experiments.train", (
            f"--workdir={w('cfm')}", "--config=experiments/configs/nope.py"),
            r"--config: .*No such file or directory: 'experiments/configs/nope\.py'", w("cfm")),
        "train_config_bad_size": Case("experiments.train", (
            f"--workdir={w('cbs')}", "--config=experiments/configs/sft.py:9b"),
            r"flag --config=experiments/configs/sft\.py:9b: Error whilst parsing config file: "
            r"ValueError: unknown size '9b'", w("cbs")),
        "train_config_unknown_key": Case("experiments.train", (
            f"--workdir={w('cuk')}", "--config=experiments/configs/sft.py:tiny",
            "--config.train.nokey=3"), r"cannot parse the flags: AttributeError: .*nokey",
            w("cuk")),
        "train_config_bad_value": Case("experiments.train", (
            f"--workdir={w('cbv')}", "--config=experiments/configs/sft.py:tiny",
            "--config.train.steps=abc"), r"flag --config\.train\.steps=abc: invalid literal",
            w("cbv")),
        "score_unknown_flag": Case("experiments.score", ("--nosuchflag",),
                                   r"Unknown command line flag 'nosuchflag'"),
        "train_no_workdir": Case("experiments.train", train_common, r"--workdir is required"),
        "train_source_not_given": Case(*train("sng"), r"--config\.data\.paths is empty: .* "
                                       r"--config\.data\.source=synthetic", w("sng")),
        "train_bad_source": Case(*train("bs", "--config.data.source=web"),
                                 r"--config\.data\.source='web': expected records or synthetic",
                                 w("bs")),
        "train_path_missing": Case(*train("pm", f"--config.data.paths={d}/none.jsonl"),
                                   rf"{d}/none\.jsonl: no such record file", w("pm")),
        "train_glob_no_match": Case(*train("gnm", f"--config.data.paths={d}/*.nothing"),
                                    rf"{d}/\*\.nothing: no record file matches", w("gnm")),
        # a tokenizer that does not match the model (its last id has no embedding)
        "train_tokenizer_over_vocab": Case("experiments.train", (
            f"--workdir={w('tov')}", "--config=experiments/configs/demo.py",
            f"--config.model.overrides.text.vocab_size={small}",
            f"--config.data.tokenizer_dir={f['tok']}", f"--config.data.paths={f['train_jsonl']}"),
            rf"tokenizer {f['tok']}: {f['vocab']} tokens, over the model's vocabulary of {small}",
            w("tov")),
        "train_missing_init_checkpoint": Case(
            *train("mic", f"--config.model.init_checkpoint={d}/nock",
                   f"--config.data.paths={f['train_jsonl']}"),
            r"--config\.model\.init_checkpoint: .*nock: no such checkpoint directory", w("mic")),
        # the hang: every record bad, skipped by default, repeated forever -> bounded
        "train_every_record_bad": Case(*train("erb", f"--config.data.paths={f['all_bad']}",
                                              "--config.data.max_consecutive_bad=20"),
                                       r"20 bad records in a row .* the last: record "
                                       r".*all_bad\.jsonl:\d: unknown_role", w("erb"),
                                       timeout=HANG_LIMIT_S),
        "train_worker_error_names_record": Case(
            *train("wen", f"--config.data.paths={f['worker_bad']}",
                   "--config.data.bad_records=raise", "--config.data.workers=1"),
            r"^record .*worker_bad\.jsonl:\d: unknown_role: turn 0 has role 'bogus'$", w("wen")),
        # a run that skips bad records: counted by reason, logged, warned about; exit 0
        "train_skips_are_logged": Case("experiments.train", (
            f"--workdir={w('skips')}", "--config=experiments/configs/demo.py",
            f"--config.model.overrides.text.vocab_size={f['vocab']}",
            "--config.model.overrides.text.num_layers=1", f"--config.data.tokenizer_dir={f['tok']}",
            f"--config.data.paths={f['train_jsonl']},{f['all_bad']}",
            f"--config.data.media_root={f['media_root']}", "--config.data.workers=0",
            "--config.data.bad_records=skip",
            "--config.train.steps=1", "--config.train.log_every=1", "--config.train.batch_size=2"),
            r"% of the \d+ records read were skipped \(warning above 1%\): "
            r"\{'unknown_role': \d+", status=0, timeout=HANG_LIMIT_S),
        # eval
        "eval_no_checkpoint": Case("experiments.eval", (f"--data={f['eval_jsonl']}",),
                                   r"--checkpoint is required"),
        "eval_missing_data": Case(*evaluate(f"--data={d}/none.jsonl"),
                                  rf"--data {d}/none\.jsonl: no such file"),
        "eval_missing_checkpoint": Case("experiments.eval", (f"--checkpoint={d}/nock",
                                        f"--data={f['eval_jsonl']}"),
                                        r"--checkpoint: .*nock: neither a checkpoint"),
        "eval_malformed_record": Case(*evaluate(f"--data={f['eval_bad']}"),
                                      r"record .*eval_bad\.jsonl:1: malformed: no non-empty "
                                      r"'messages'"),
        "eval_output_dir_missing": Case(*evaluate(f"--data={f['eval_jsonl']}",
                                                  f"--output={d}/no/r.json"),
                                        r"output directory .* does not exist"),
        "eval_missing_image_is_skipped": Case(*evaluate(
            f"--data={f['eval_jsonl']}", f"--media_root={f['media_root']}",
            "--max_new_tokens=2", "--batch_size=4", f"--output={d}/report.json"),
            rf"\[eval\] skipped 1 records of .*'missing_media': 1.*the first: record "
            rf".*eval\.jsonl:1\b.*: missing_media: .*{f['eval_missing']}",
            status=0),
        # demo
        "demo_bad_count": Case("experiments.demo", ("--num_train=0", f"--workdir={d}/demo"),
                               r"--num_train=0: must be at least 1", f"{d}/demo"),
        "demo_workdir_under_a_file": Case("experiments.demo", (f"--workdir={f['a_file']}/demo",
                                          "--num_train=2", "--num_eval=1", "--steps=1"),
                                          rf"{f['a_file']}"),
        # converters
        "hf_to_orbax_no_flags": Case("checkpoints_convert.hf_to_orbax", (),
                                     r"--hf_dir is required"),
        "hf_to_orbax_missing_dir": Case("checkpoints_convert.hf_to_orbax", (
            f"--hf_dir={d}/nope", f"--output_dir={d}/conv"), rf"{d}/nope: not a directory",
            f"{d}/conv"),
        "hf_to_orbax_no_weights": Case("checkpoints_convert.hf_to_orbax", (
            f"--hf_dir={f['config_only']}", f"--output_dir={d}/conv"), rf"{f['config_only']}",
            f"{d}/conv"),
        "orbax_to_hf_missing_checkpoint": Case("checkpoints_convert.orbax_to_hf", (
            f"--checkpoint={d}/nock", f"--output_dir={d}/hfout"),
            rf"{d}/nock: no such checkpoint directory", f"{d}/hfout"),
    }  # fmt: skip
    messages = {  # the score array cases' expected lines
        "score_missing_inputs": rf"{d}/none\.npz: no such inputs file",
        "score_not_npz": r"text\.npz: not a readable \.npz of plain arrays",
        "score_pickled_npz": r"pickled\.npz: not a readable \.npz of plain arrays",
        "score_ids_1d": r"ids_1d\.npz: array 'input_ids' has shape \(4,\), expected rank 2",
        "score_ids_float": r"ids_float\.npz: array 'input_ids' has dtype float32, expected "
                           r"integers",
        "score_id_over_vocab": r"ids_big\.npz: 'input_ids' holds token id 211, outside the "
                               r"model's vocabulary \[0, 211\)",
        "score_id_negative": r"ids_neg\.npz: 'input_ids' holds token id -1, outside",
        "score_mask_shape": r"mask_shape\.npz: attention_mask shape \(1, 3\) differs from "
                            r"input_ids \(1, 4\)",
        "score_unknown_array": r"unknown\.npz: unknown arrays \['pixels'\]",
        "score_image_tokens_no_grid": r"img_no_grid\.npz: 'input_ids' holds 4 image tokens but "
                                      r"there is no 'image_grid_thw'",
        "score_video_tokens_no_grid": r"vid_no_grid\.npz: 'input_ids' holds 1 video tokens but "
                                      r"there is no 'video_grid_thw'",
        "score_grid_no_pixels": r"grid_no_pix\.npz: 'image_grid_thw' without 'pixel_values'",
        "score_pixel_width": r"pix_width\.npz: 'pixel_values' must be float \[patches, 1176\], "
                             r"got float32\[16, 1000\]",
        "score_pixel_rows": r"pix_rows\.npz: 'pixel_values' has 3 rows, 'image_grid_thw' "
                            r"describes 16",
        "score_tokens_vs_grid": r"tokens_grid\.npz: 'input_ids' holds 3 image tokens, "
                                r"'image_grid_thw' describes 4",
    }  # fmt: skip
    for name, message in messages.items():
        table[name] = dataclasses.replace(table[name], message=message)
    return table


CASE_NAMES = sorted(cases(dict.fromkeys(
    ["hf", "d", "tok", "ckpt", "media_root", "all_bad", "worker_bad", "vocab", "eval_jsonl",
     "eval_bad", "eval_missing", "train_jsonl", "config_only", "good", "corrupt_png", "corrupt_mp4",
     "good_png", "ids_big", "img_no_grid", "a_file", "not_npz", "pickled", "ids_1d",
     "ids_float", "ids_neg", "mask_shape", "unknown", "vid_no_grid", "grid_no_pix",
     "pix_width", "pix_rows", "tokens_grid"], "")))  # fmt: skip


def run_case(case: Case) -> tuple[subprocess.CompletedProcess | None, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", case.module, *case.args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=case.timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        proc = None  # a hang
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def results(files):
    table = cases(files)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(run_case, case) for name, case in table.items()}
        out = {name: (table[name], *fut.result()) for name, fut in futures.items()}
    if os.environ.get("CLI_ERRORS_MATRIX"):  # BUILD_NOTES' table: case -> the line printed
        write_matrix(out, files["d"], os.environ["CLI_ERRORS_MATRIX"])
    return out


def write_matrix(results, tmp: str, path: str) -> None:
    """A markdown table of every case: tool, the bad input (case name), exit status and the
    error line printed (temporary paths shortened to "…")."""
    rows = ["| case | tool | exit | message |", "| --- | --- | --- | --- |"]
    for name, (case, proc, _) in sorted(results.items()):
        lines = [ln for ln in error_lines(proc.stderr) if ": error: " in ln] if proc else []
        if case.status == 0 and proc:
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                     if re.search(case.message, ln)]  # fmt: skip
        shown = (lines[0] if lines else "(hang)").replace(tmp, "…").replace(ROOT, ".")
        shown = re.sub(r"/tmp/pytest-of-\w+/pytest-\d+/\w+", "…", shown).replace("|", "\\|")
        code = proc.returncode if proc else "-"
        rows.append(f"| {name} | {case.module.rsplit('.', 1)[-1]} | {code} | `{shown}` |")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")


def error_lines(stderr: str) -> list[str]:
    """stderr without absl / Orbax / JAX log lines (I/W + date) and progress output."""
    return [ln for ln in stderr.splitlines()
            if ln.strip() and not re.match(r"[IWE]\d{4} |\[eval\]|\[train\]", ln)]  # fmt: skip


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_one_line_no_traceback(results, name):
    case, proc, seconds = results[name]
    assert proc is not None, f"{name}: still running after {case.timeout} s (a hang)"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == case.status, (proc.returncode, proc.stderr[-3000:])
    if case.status == 0:  # a reported skip: the message is a log line, the run completes
        assert re.search(case.message, proc.stdout + proc.stderr), proc.stdout[-2000:]
    else:
        lines = [ln for ln in error_lines(proc.stderr) if ": error: " in ln]
        assert len(lines) == 1, proc.stderr[-3000:]
        prog, _, message = lines[0].partition(": error: ")
        assert prog == case.module.rsplit(".", 1)[-1]
        assert re.search(case.message, message), message
    if case.absent:
        assert not os.path.exists(case.absent), case.absent


def test_eval_skip_is_in_the_report(results, files):
    case, proc, _ = results["eval_missing_image_is_skipped"]
    assert proc is not None and proc.returncode == 0, proc and proc.stderr[-2000:]
    with open(os.path.join(files["d"], "report.json")) as f:
        report = json.load(f)
    assert [s["reason"] for s in report["skipped"]] == ["missing_media"]
    assert files["eval_missing"] in report["skipped"][0]["detail"]
    assert len(report["samples"]) == 2  # the other two records were evaluated


def test_skipped_records_in_metrics_tensorboard_and_progress_line(results, files):
    """`train_skips_are_logged`: skipped counts by reason in metrics.jsonl, in TensorBoard's
    event file and on the progress line."""
    case, proc, _ = results["train_skips_are_logged"]
    assert proc is not None and proc.returncode == 0, proc and proc.stderr[-3000:]
    workdir = os.path.join(files["d"], "skips")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert logged[-1]["skipped_unknown_role"] >= 1
    assert logged[-1]["skipped_records"] == logged[-1]["skipped_unknown_role"]  # no other reason
    assert 0 < logged[-1]["skipped_fraction"] < 1
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    with open(os.path.join(workdir, "tensorboard", events[0]), "rb") as f:
        assert b"train/skipped_unknown_role" in f.read()
    assert re.search(r"\[train\] step 1: .*skipped_records \d", proc.stdout), proc.stdout
