"""qwen25vl_jax.checkpoint: save / restore, dtypes, trainer step directories (restored and
exported), refusals, and the restore straight into arrays sharded over 8 fake CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from checkpoints_convert import ConversionError, hf_to_orbax, orbax_to_hf
from qwen25vl_jax.checkpoint import (
    ParamsReader,
    ParamsWriter,
    load_checkpoint,
    locate_params,
    param_save_args,
    read_config,
    save_params,
)
from qwen25vl_jax.hf_weights import RULES, load_hf, stacked_shape
from tests.test_convert import TINY, _edit_config, assert_same_tensors, random_release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat(model) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def test_save_and_load_round_trip(tiny, tmp_path):
    path = tmp_path / "ck"
    save_params(path, tiny.jax, tiny.cfg)
    assert read_config(path) == tiny.cfg
    model, cfg = load_checkpoint(path)
    assert cfg == tiny.cfg
    want, got = flat(tiny.jax), flat(model)
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    half, _ = load_checkpoint(path, param_dtype=jnp.bfloat16)
    for k, v in flat(half).items():
        assert v.dtype == jnp.bfloat16
        np.testing.assert_array_equal(v, want[k].astype(jnp.bfloat16), err_msg=str(k))
    reader = ParamsReader(locate_params(path))  # stacked arrays stored one layer per chunk row
    chunk = reader.array("decoder/layers/gate_kernel").chunk_layout.read_chunk.shape
    assert chunk[0] == 1
    with pytest.raises(FileExistsError, match="already exists"):
        save_params(path, tiny.jax, tiny.cfg)
    save_params(path, nnx.state(half), tiny.cfg, overwrite=True)  # an nnx.State, in bfloat16
    assert {v.dtype for v in flat(load_checkpoint(path)[0]).values()} == {np.dtype(jnp.bfloat16)}


def test_converted_bfloat16_loads_as_stored_or_cast(tmp_path):
    src = random_release(tmp_path / "src")
    ck = hf_to_orbax.convert(src, tmp_path / "ck", progress=False)
    stored, _ = load_checkpoint(ck)
    as32, _ = load_checkpoint(ck, param_dtype="float32")
    a, b = flat(stored), flat(as32)
    for k in a:
        assert a[k].dtype == ml_dtypes.bfloat16 and b[k].dtype == np.float32
        np.testing.assert_array_equal(a[k].astype(np.float32), b[k], err_msg=str(k))


def test_trainer_step_directories(tiny, tmp_path):
    """A CheckpointManager step with `params` beside optimizer state loads (parameters only),
    with the config as a JSON item or as config.json at the manager root."""
    params = nnx.to_pure_dict(nnx.state(tiny.jax))
    opt = {"mu": jax.tree.map(jnp.zeros_like, params), "count": jnp.asarray(3)}
    with ocp.CheckpointManager(tmp_path / "a", item_names=("params", "opt_state", "config")) as m:
        m.save(5, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params, save_args=param_save_args(params)),
            opt_state=ocp.args.StandardSave(opt),
            config=ocp.args.JsonSave(tiny.cfg.to_hf_dict()),
        ))  # fmt: skip
    with ocp.CheckpointManager(tmp_path / "b", item_names=("params", "opt_state")) as m:
        m.save(9, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                          opt_state=ocp.args.StandardSave(opt)))  # fmt: skip
    (tmp_path / "b" / "config.json").write_text(json.dumps(tiny.cfg.to_hf_dict()))
    want = flat(tiny.jax)
    for step_dir in (tmp_path / "a" / "5", tmp_path / "b" / "9", tmp_path / "b" / "9" / "params"):
        model, cfg = load_checkpoint(step_dir)
        assert cfg == tiny.cfg
        for k, v in flat(model).items():
            np.testing.assert_array_equal(v, want[k], err_msg=f"{step_dir} {k}")


def test_refusals_name_the_checkpoint_and_parameter(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "half" / "params").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"half: incomplete checkpoint"):
        load_checkpoint(tmp_path / "half")
    ck = tmp_path / "ck"
    save_params(ck, tiny.jax, tiny.cfg)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(ValueError, match=r"params: unexpected parameters: decoder/lm_head"):
        load_checkpoint(ck)
    (ck / "config.json").write_text(json.dumps({**cfg, "vocab_size": 212}))
    with pytest.raises(ValueError, match=r"parameter decoder/embed has shape \(211, 48\), the "
                       r"config implies \(212, 48\)"):  # fmt: skip
        load_checkpoint(ck)
    os.remove(ck / "config.json")
    with pytest.raises(FileNotFoundError, match="no model config"):
        read_config(ck)
    params = nnx.to_pure_dict(nnx.state(tiny.jax))
    del params["decoder"]["final_norm"]
    with pytest.raises(ValueError, match=r"missing parameters: decoder/final_norm"):
        save_params(tmp_path / "bad", params, tiny.cfg)
    assert not (tmp_path / "bad").exists()


def test_export_of_a_trainer_step_directory(tiny, tmp_path):
    """Parameters saved by Orbax as the `params` item of a CheckpointManager step, beside an
    optimizer item, export to the source's exact tensors."""
    model, _ = load_hf(tiny.path)
    params = nnx.to_pure_dict(nnx.state(model))
    with ocp.CheckpointManager(tmp_path / "run", item_names=("params", "opt_state", "config")) as m:
        m.save(7, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params, save_args=param_save_args(params)),
            opt_state=ocp.args.StandardSave({"count": np.arange(3)}),
            config=ocp.args.JsonSave(tiny.cfg.to_hf_dict()),
        ))  # fmt: skip
        m.wait_until_finished()
    orbax_to_hf.export(tmp_path / "run" / "7", tmp_path / "hf", progress=False)
    assert_same_tensors(tiny.path, tmp_path / "hf")


def test_refused_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    with pytest.raises(ConversionError, match="no such checkpoint directory"):
        orbax_to_hf.export(ck, tmp_path / "hf", progress=False)
    (ck / "params").mkdir(parents=True)
    with pytest.raises(ConversionError, match="incomplete checkpoint"):
        orbax_to_hf.export(ck, tmp_path / "hf", progress=False)
    (ck / "params").rmdir()
    w = ParamsWriter(str(ck / "params"))
    for rule in RULES:
        if rule.when(TINY) and rule.path != "decoder/lm_head":
            shape = stacked_shape(rule, TINY)
            w.create(rule.path, shape, np.float32, stacked=rule.layers(TINY) is not None)
    w.finish()
    with pytest.raises(ConversionError, match=r"ck: no model config"):
        orbax_to_hf.export(ck, tmp_path / "hf", progress=False)
    (ck / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    with pytest.raises(ConversionError, match=r"params: missing parameters: decoder/lm_head"):
        orbax_to_hf.export(ck, tmp_path / "hf", progress=False)
    _edit_config(ck, intermediate_size=72, tie_word_embeddings=True)
    with pytest.raises(ConversionError, match=r"parameter decoder/layers/gate_kernel has shape "
                       r"\(2, 48, 70\), the config implies \(2, 48, 72\)"):  # fmt: skip
        orbax_to_hf.export(ck, tmp_path / "hf", progress=False)
    assert not (tmp_path / "hf").exists()


SHARDED = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from qwen25vl_jax.checkpoint import load_checkpoint
    from qwen25vl_jax.sharding import make_mesh, state_shardings

    assert len(jax.devices()) == 8
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    split = 0
    for dtype in (None, jnp.bfloat16, jnp.float32):
        one, cfg = load_checkpoint(sys.argv[1], param_dtype=dtype)
        many, _ = load_checkpoint(sys.argv[1], param_dtype=dtype, mesh=mesh)
        want = dict(nnx.to_flat_state(state_shardings(nnx.state(many), mesh)))
        for key, var in nnx.to_flat_state(nnx.state(many)):
            a, b = var.get_value(), dict(nnx.to_flat_state(nnx.state(one)))[key].get_value()
            assert a.sharding.is_equivalent_to(want[key], a.ndim), key
            assert len(a.sharding.device_set) == 8 and a.dtype == b.dtype, key
            assert a.dtype == (jnp.bfloat16 if dtype is None else dtype), key
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(key))
            shard = a.addressable_shards[0].data.shape
            split += int(np.prod(shard) < np.prod(a.shape))
    assert split >= 90, split  # nearly all of 3 x 33 arrays are split, not replicated
    print("sharded restore ok", split)
""")


def test_sharded_restore_on_eight_fake_devices(tmp_path):
    """An fsdp=4 x tensor=2 restore equals the single-device restore, array for array, in the
    stored dtype (bfloat16) and cast; every array has the layout `state_shardings` gives."""
    src = random_release(tmp_path / "src")
    ck = hf_to_orbax.convert(src, tmp_path / "ck", progress=False)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}  # fmt: skip
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    p = subprocess.run([sys.executable, str(script), ck], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-4000:]
    assert "sharded restore ok" in p.stdout
