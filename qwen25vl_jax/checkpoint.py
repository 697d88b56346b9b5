"""Orbax checkpoints of the parameter tree: layout, streaming array IO, save and sharded restore.

Layout of a checkpoint directory (a converted checkpoint and a trainer step directory alike):

    <ckpt>/
      config.json      the released flat Hugging Face config (`ModelConfig.to_hf_dict()`), so the
                       checkpoint alone describes the model
      params/          an Orbax PyTree item (OCDBT database through tensorstore, zarr arrays):
        _METADATA        the tree: nested keys of `nnx.to_pure_dict(nnx.state(model))`
        manifest.ocdbt, d/   arrays named by their keys joined by "." (Orbax's naming; our
                       parameter paths join them by "/", `param_paths`), e.g.
                       "decoder.layers.q_kernel", stacked [layers, ...] (float32 or bfloat16)
      hf_assets/       (converted checkpoints only) tokenizer / processor files of the release,
                       copied back by `orbax_to_hf`

A trainer keeps the parameters as the `params` item of an Orbax `CheckpointManager` step
directory (`<root>/<step>/params/`), beside its optimizer items; the config is found as
`<step>/config.json`, as an Orbax JSON item `<step>/config/` (`ocp.args.JsonSave(
cfg.to_hf_dict())`), or as `<root>/config.json`. `load_checkpoint` and `orbax_to_hf` read only
`params` (a path to the `params` item itself works too). Trainers should save with
`param_save_args(params)`: one storage chunk per layer, so exports stream layer by layer.

Two writers produce the same format: `save_params` (Orbax itself, from arrays in memory) and
`ParamsWriter` (tensorstore, one array slab at a time: the converter's path for models larger
than host memory). Reads go through Orbax (`load_checkpoint`: each process reads only the
shards its devices hold) or through `ParamsReader` (slab by slab, for export).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import nnx

from qwen25vl_jax.config import ModelConfig, from_hf_config
from qwen25vl_jax.hf_weights import RULES, stacked_shape
from qwen25vl_jax.param_paths import flatten, join, keypath_name, split, unflatten

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
CONFIG_ITEM = "config"  # an Orbax JSON item holding the same dict (trainer step directories)
METADATA_FILE = "_METADATA"
CHUNK_BYTES = 64 << 20  # storage chunk target: restores on a mesh read little beyond their shard


def _stacked_paths() -> set[str]:
    return {r.path for r in RULES if "{i}" in r.hf}


def expected_params(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter path of the model with its (stacked) shape, from the weight table."""
    return {r.path: stacked_shape(r, cfg) for r in RULES if r.when(cfg)}


def check_params(stored: Mapping[str, tuple[int, ...]], cfg: ModelConfig, source: str) -> None:
    """Errors naming `source` and the parameter on missing, unexpected or misshapen arrays."""
    want = expected_params(cfg)
    if missing := want.keys() - stored.keys():
        raise ValueError(f"{source}: missing parameters: {', '.join(sorted(missing))}")
    if unexpected := stored.keys() - want.keys():
        raise ValueError(f"{source}: unexpected parameters: {', '.join(sorted(unexpected))}")
    for path, shape in want.items():
        if tuple(stored[path]) != shape:
            raise ValueError(
                f"{source}: parameter {path} has shape {tuple(stored[path])}, the config implies "
                f"{shape}"
            )


# ---- locating the parts -----------------------------------------------------------------------
def locate_params(path: str | os.PathLike) -> str:
    """The Orbax `params` item directory of a checkpoint (or `path` itself if it is one)."""
    path = os.path.abspath(os.fspath(path))
    for cand in (os.path.join(path, PARAMS_ITEM), path):
        if os.path.isfile(os.path.join(cand, METADATA_FILE)):
            return cand
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if os.path.isdir(os.path.join(path, PARAMS_ITEM)):
        raise ValueError(
            f"{path}: incomplete checkpoint ({PARAMS_ITEM}/{METADATA_FILE} missing: an "
            "interrupted conversion or save?)"
        )
    raise FileNotFoundError(f"{path}: not a checkpoint (no {PARAMS_ITEM}/{METADATA_FILE})")


def latest_checkpoint(path: str | os.PathLike) -> str:
    """A checkpoint directory (holding `params/`, or the params item itself) as is; a trainer
    workdir (an Orbax `CheckpointManager` root) -> its latest step directory whose `params`
    item is complete. Orbax names a step directory by the bare step number only once written."""
    path = os.fspath(path)
    if any(os.path.exists(os.path.join(path, p)) for p in (PARAMS_ITEM, METADATA_FILE)):
        return path
    steps = checkpoint_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path}: neither a checkpoint nor a directory of step checkpoints")
    return os.path.join(path, str(steps[-1]))


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of a trainer workdir's step directories whose `params` item is complete,
    ascending."""
    workdir = os.fspath(workdir)
    names = os.listdir(workdir) if os.path.isdir(workdir) else []
    return sorted(
        int(d)
        for d in names
        if d.isdigit() and os.path.isfile(os.path.join(workdir, d, PARAMS_ITEM, METADATA_FILE))
    )


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of a checkpoint: `config.json`, a JSON item `config/`, or the manager
    root's `config.json` (see the module docstring)."""
    params = locate_params(path)
    ckpt = os.path.dirname(params)
    cands = [
        os.path.join(ckpt, CONFIG_FILE),
        os.path.join(ckpt, CONFIG_ITEM, "metadata"),
        os.path.join(os.path.dirname(ckpt), CONFIG_FILE),
    ]
    for f in cands:
        if os.path.isfile(f):
            return from_hf_config(f)
    raise FileNotFoundError(f"{ckpt}: no model config (looked for {', '.join(cands)})")


# ---- streaming array IO (tensorstore, the format Orbax writes and reads) ----------------------
def _ts_context() -> ts.Context:
    return ocp.type_handlers.get_ts_context(use_ocdbt=True)


def _info(params_dir: str, path: str, ctx: ts.Context, use_zarr3: bool = False):
    return ocp.type_handlers.ParamInfo(
        name=".".join(split(path)),  # Orbax names an array by its keys joined with "."
        parent_dir=epath.Path(params_dir),
        use_zarr3=use_zarr3,
        use_compression=False,
        ts_context=ctx,
    )


class ParamsWriter:
    """Writes an Orbax params item array by array, slab by slab, through tensorstore.

    `create(path, shape, dtype)` returns a writable `ts.TensorStore`; stacked arrays get one
    storage chunk row per layer so a layer is written (and later read) on its own. `finish()`
    writes `_METADATA` last: until then the item is not a checkpoint.
    """

    def __init__(self, params_dir: str, *, chunk_bytes: int | None = None):
        self.dir = os.path.abspath(params_dir)
        os.makedirs(self.dir, exist_ok=False)
        self.ctx = _ts_context()
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self.paths: list[str] = []

    def create(self, path: str, shape: tuple[int, ...], dtype, *, stacked: bool):
        dtype = np.dtype(dtype)
        write_shape = (1, *shape[1:]) if stacked else tuple(shape)
        spec = ocp.type_handlers.get_json_tspec_write(
            _info(self.dir, path, self.ctx),
            use_ocdbt=True,
            global_shape=tuple(shape),
            local_shape=write_shape,
            dtype=dtype,
            arg=ocp.type_handlers.SaveArgs(chunk_byte_size=max(self.chunk_bytes, dtype.itemsize)),
        )
        self.paths.append(path)
        return ts.open(spec, create=True, open=True, context=self.ctx).result()

    def finish(self) -> None:
        tree = {
            str(split(p)): {  # Orbax keys an entry by the str() of its key tuple
                "key_metadata": [{"key": k, "key_type": 2} for k in split(p)],  # 2: dict key
                "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False},
            }
            for p in self.paths
        }
        meta = {
            "tree_metadata": tree,
            "use_ocdbt": True,
            "use_zarr3": False,
            "store_array_data_equal_to_fill_value": True,
            "custom_metadata": None,
        }
        write_json(os.path.join(self.dir, METADATA_FILE), meta)


class ParamsReader:
    """Reads the arrays of an Orbax params item (ours or Orbax's) lazily, slab by slab."""

    def __init__(self, params_dir: str):
        self.dir = os.path.abspath(params_dir)
        meta_file = os.path.join(self.dir, METADATA_FILE)
        try:
            with open(meta_file) as f:
                meta = json.load(f)
            self._paths = [
                join(k["key"] for k in e["key_metadata"]) for e in meta["tree_metadata"].values()
            ]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_file}: unreadable Orbax tree metadata ({e!r})") from None
        self.use_ocdbt = bool(meta.get("use_ocdbt", True))
        self.use_zarr3 = bool(meta.get("use_zarr3", False))
        self.ctx = _ts_context()
        self._open: dict[str, ts.TensorStore] = {}

    def paths(self) -> list[str]:
        return list(self._paths)

    def array(self, path: str) -> ts.TensorStore:
        """The stored array (read-only handle: `.shape`, `.dtype`, `[i].read()`)."""
        if path not in self._open:
            info = _info(self.dir, path, self.ctx, self.use_zarr3)
            spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self.use_ocdbt)
            try:
                self._open[path] = ts.open(spec, open=True, read=True, context=self.ctx).result()
            except Exception as e:  # tensorstore raises ValueError/RuntimeError variants
                raise ValueError(f"{self.dir}: parameter {path}: {e}") from None
        return self._open[path]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {p: tuple(self.array(p).shape) for p in self._paths}

    def dtype(self, path: str) -> np.dtype:
        return np.dtype(self.array(path).dtype.numpy_dtype)


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ---- whole-tree save and restore through Orbax --------------------------------------------------
def param_save_args(params: Mapping, *, chunk_bytes: int = CHUNK_BYTES):
    """`ocp.SaveArgs` for a params pure dict: stacked arrays chunked one layer per chunk row."""
    stacked = _stacked_paths()

    def one(keypath, _):
        axes = (0,) if keypath_name(keypath) in stacked else ()
        return ocp.SaveArgs(chunk_byte_size=chunk_bytes, shard_axes=axes)

    return jax.tree_util.tree_map_with_path(one, params)


def _pure(model_or_state) -> dict:
    if isinstance(model_or_state, nnx.Module):
        model_or_state = nnx.state(model_or_state)
    if isinstance(model_or_state, nnx.State):
        return nnx.to_pure_dict(model_or_state)
    return dict(model_or_state)


def save_params(path: str | os.PathLike, model_or_state, cfg: ModelConfig, *, overwrite=False):
    """Saves parameters (a `Qwen25VL`, its `nnx.State`, or the pure dict) and `config.json` as
    a checkpoint directory; written beside `path` and renamed into place at the end.

    Meant for one process (tools, tests, exports); a multi-process trainer saves the same
    `params` item through an Orbax `CheckpointManager` with `param_save_args`.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    params = _pure(model_or_state)
    check_params({p: tuple(np.shape(v)) for p, v in flatten(params).items()}, cfg, path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with ocp.StandardCheckpointer() as ck:
            ck.save(os.path.join(tmp, PARAMS_ITEM), params, save_args=param_save_args(params))
            ck.wait_until_finished()
        write_json(os.path.join(tmp, CONFIG_FILE), cfg.to_hf_dict())
        old = f"{tmp}.old"
        if os.path.exists(path):
            os.rename(path, old)  # replaced only once the new one is complete
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike, *, param_dtype=None, mesh=None):
    """Restores a checkpoint into a `Qwen25VL`; returns (model, config).

    param_dtype: None keeps the stored dtype of each array, else every parameter is cast to it
    (e.g. jnp.bfloat16) while reading. mesh: None restores onto the first device; a mesh
    restores each array straight into its `sharding.state_shardings` layout, each process
    reading only the shards its devices hold.
    """
    from qwen25vl_jax.model.qwen25vl import Qwen25VL
    from qwen25vl_jax.sharding import state_shardings

    params_dir = locate_params(path)
    cfg = read_config(path)
    reader = ParamsReader(params_dir)
    check_params(reader.shapes(), cfg, params_dir)
    build_dtype = jnp.float32 if param_dtype is None else jnp.dtype(param_dtype)
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0), param_dtype=build_dtype))
    graphdef, state = nnx.split(abstract)
    if mesh is not None:
        shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    else:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one, nnx.to_pure_dict(state))
    target = {
        p: jax.ShapeDtypeStruct(
            tuple(reader.array(p).shape),
            reader.dtype(p) if param_dtype is None else build_dtype,
            sharding=sh,
        )
        for p, sh in flatten(shardings).items()
    }
    with ocp.StandardCheckpointer() as ck:
        restored = ck.restore(params_dir, unflatten(target))
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state), cfg
