"""Batched generation: one compiled prefill per shape bucket, one compiled decode step.

Host side, `prompt_batch.prepare_batch` places the prompts (one `Sample` each), left padded, in
shape buckets, with the `rope_deltas` of *these* prompts. On the device:

- prefill: the vision tower runs once, the decoder fills the KV cache, the first token is
  chosen from the last position's logits;
- decode step: feeds the last token of every row, writes one cache slot, chooses the next.
  The position of a fed token is its text position (the number of real tokens before it) plus
  the row's rope_delta, as transformers' `compute_3d_position_ids` (and, equivalently for a
  prompt ending in text, `generate`'s last position + 1);
- `generate` runs the step under one `lax.while_loop` (no host round trip per token, stops
  early once every row is done); `stream` calls the same step from Python and yields tokens.

Every step has the same shapes (the cache is static, the step count and `max_new_tokens` are
traced), so neither the prompt length within a bucket nor the number of tokens recompiles.
A stop token is emitted, then its row is done and receives `pad_token`, as transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from qwen25vl_jax.config import ModelConfig
from qwen25vl_jax.data.hf_format import samples_from_hf
from qwen25vl_jax.data.sample import Sample
from qwen25vl_jax.inference.kv_cache import KVCache, init_cache
from qwen25vl_jax.inference.prompt_batch import PreparedBatch, prepare_batch, round_up
from qwen25vl_jax.inference.sampling import Sampling, sample, token_logprob
from qwen25vl_jax.model.inputs import place
from qwen25vl_jax.model.layers import cast
from qwen25vl_jax.model.qwen25vl import Qwen25VL, RunOptions
from qwen25vl_jax.model.rope import mrope
from qwen25vl_jax.sharding import logical_to_spec, state_shardings

MAX_STOP_TOKENS = 8  # stop ids are data (padded with -1), so changing them compiles nothing


# ---- device side ------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """Everything the decode step carries.

    cache: the KV cache; tokens: int32[B, T] output buffer (pad-filled); logprobs: float32[B, T]
    their log-probs (`GenerateOutput`); logits: float32[B, T, V] or None; step: int32[] tokens
    produced so far; last: int32[B] the last token produced (the next input); pos: int32[B]
    its text position; deltas: int32[B] rope_deltas; done: bool[B]; key: the PRNG key (step s
    samples with fold_in(key, s)); stop: int32[MAX_STOP_TOKENS] stop ids (-1 = none); pad:
    int32[] the token emitted by finished rows.
    """

    cache: KVCache
    tokens: jax.Array
    logprobs: jax.Array
    logits: jax.Array | None
    step: jax.Array
    last: jax.Array
    pos: jax.Array
    deltas: jax.Array
    done: jax.Array
    key: jax.Array
    stop: jax.Array
    pad: jax.Array


@dataclasses.dataclass(frozen=True)
class _Static:
    """The static (hashable) options of the compiled functions."""

    sampling: Sampling
    opts: RunOptions


def _record(ds: DecodeState, logits: jax.Array, st: _Static) -> DecodeState:
    """Chooses token `ds.step` from logits [B, V], writes it and advances the step."""
    tok = sample(logits, jax.random.fold_in(ds.key, ds.step), st.sampling)
    tok = jnp.where(ds.done, ds.pad, tok)
    logp = jnp.where(ds.done, 0.0, token_logprob(logits, tok, st.sampling))
    done = ds.done | jnp.isin(tok, ds.stop)

    def put(buf, x):  # column `ds.step` of a [B, T, ...] buffer <- x [B, ...]
        return jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], ds.step, axis=1)

    out_logits = None if ds.logits is None else put(ds.logits, logits)
    return dataclasses.replace(
        ds, tokens=put(ds.tokens, tok), logprobs=put(ds.logprobs, logp), logits=out_logits,
        step=ds.step + 1, last=tok, done=done,
    )  # fmt: skip


def _prefill(
    graphdef,
    state,
    inputs,
    deltas,
    num_real,
    key,
    stop,
    pad,
    *,
    cache_size,
    cache_dtype,
    out_len,
    return_logits,
    st: _Static,
) -> DecodeState:
    """ViT + decoder over the bucketed prompt into a fresh cache of `cache_size` slots; chooses
    token 0. deltas, num_real: int32[B]; stop: int32[MAX_STOP_TOKENS]; pad: int32[]."""
    model: Qwen25VL = nnx.merge(graphdef, state)
    t, opts = model.cfg.text, st.opts
    b = inputs.tokens.shape[0]
    x = model.embed(inputs, opts)  # the vision tower runs here, once
    cos, sin = mrope(
        inputs.positions, head_dim=t.head_dim, theta=t.rope_theta, sections=t.mrope_section
    )
    cache = init_cache(t, b, cache_size, cache_dtype)
    h, cache = model.decoder(x, cos, sin, inputs.segment_ids, opts, cache=cache)
    logits = model.decoder.logits(h[:, -1:])[:, 0]  # left padding: the last column is real
    ds = DecodeState(
        cache=cache,
        tokens=jnp.full((b, out_len), pad, jnp.int32),
        logprobs=jnp.zeros((b, out_len), jnp.float32),
        logits=jnp.zeros((b, out_len, logits.shape[-1]), jnp.float32) if return_logits else None,
        step=jnp.zeros((), jnp.int32),
        last=jnp.zeros((b,), jnp.int32),
        pos=num_real.astype(jnp.int32),
        deltas=deltas.astype(jnp.int32),
        done=jnp.zeros((b,), bool),
        key=key,
        stop=stop,
        pad=pad,
    )
    return _record(ds, logits, st)


def _step_body(model: Qwen25VL, ds: DecodeState, st: _Static) -> DecodeState:
    """Feeds `ds.last` at 3-D position text position + rope_delta (all three axes, as text)."""
    t, opts = model.cfg.text, st.opts
    x = model.decoder.embed_tokens(ds.last[:, None], dtype=opts.dtype)  # [B, 1, D]
    positions = jnp.broadcast_to((ds.pos + ds.deltas)[None, :, None], (3, x.shape[0], 1))
    cos, sin = mrope(positions, head_dim=t.head_dim, theta=t.rope_theta, sections=t.mrope_section)
    segment_ids = jnp.ones(ds.last.shape + (1,), jnp.int32)  # [B, 1]: every fed token is real
    h, cache = model.decoder(x, cos, sin, segment_ids, opts, cache=ds.cache)
    ds = dataclasses.replace(ds, cache=cache, pos=ds.pos + 1)
    return _record(ds, model.decoder.logits(h)[:, 0], st)


def _decode_step(graphdef, state, ds: DecodeState, *, st: _Static) -> DecodeState:
    return _step_body(nnx.merge(graphdef, state), ds, st)


def _decode_loop(graphdef, state, ds: DecodeState, max_new_tokens, *, st: _Static):
    """Steps until `max_new_tokens` (traced) tokens are produced or every row is done."""
    model = nnx.merge(graphdef, state)
    limit = jnp.minimum(max_new_tokens, ds.tokens.shape[1])
    cond = lambda ds: (ds.step < limit) & ~jnp.all(ds.done)
    return jax.lax.while_loop(cond, lambda ds: _step_body(model, ds, st), ds)


_STATIC = ("graphdef", "st")
prefill_fn = jax.jit(
    _prefill, static_argnames=(*_STATIC, "cache_size", "cache_dtype", "out_len", "return_logits")
)
decode_step_fn = jax.jit(_decode_step, static_argnames=_STATIC, donate_argnames=("ds",))
decode_loop_fn = jax.jit(_decode_loop, static_argnames=_STATIC, donate_argnames=("ds",))


# ---- the user-facing object -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """tokens: int32[B, max_new_tokens] (pad after a row's stop token); logprobs: float32[B,
    max_new_tokens], each token's log-prob under softmax(logits / temperature), before top-k /
    top-p (`sampling.token_logprob`; 0 after the stop); logits: float32[B, max_new_tokens, V]
    or None (rows past their end hold junk); num_tokens: int[B] tokens up to and including the
    stop token; steps: tokens produced per row before the loop ended (less than max_new_tokens
    when every row stopped early); prompt_len: the bucketed prompt length."""

    tokens: np.ndarray
    logprobs: np.ndarray
    logits: np.ndarray | None
    num_tokens: np.ndarray
    steps: int
    prompt_len: int


class Generator:
    """Generation with one model, on one device or on a mesh (heads over `tensor`, batch over
    `data`). The jitted functions are module-level, so generators share compilations.

    cache_dtype: KV cache dtype (default: the compute dtype `opts.dtype`).
    weights_dtype: the dtype the generator holds the floating weights in (default: the compute
    dtype). Every layer casts its weights to the compute dtype where it uses them, so holding
    them in that dtype gives the same numbers while a decode step, bound by reading the
    weights, reads bf16 instead of float32 masters and converts nothing.
    length_bucket / patch_bucket / cache_bucket: shape buckets for the prompt length, the ViT
    slots and the cache size; one prefill is compiled per bucket.
    """

    def __init__(
        self,
        model: Qwen25VL,
        *,
        opts: RunOptions = RunOptions(),
        mesh: Mesh | None = None,
        cache_dtype=None,
        weights_dtype=None,
        length_bucket: int = 64,
        patch_bucket: int | None = None,
        cache_bucket: int = 128,
    ):
        self.cfg: ModelConfig = model.cfg
        self.opts, self.mesh = opts, mesh
        self.cache_dtype = jnp.dtype(cache_dtype or opts.dtype)
        self.length_bucket, self.patch_bucket = length_bucket, patch_bucket
        self.cache_bucket = cache_bucket
        self.graphdef, state = nnx.split(model)
        state = cast(state, jnp.dtype(weights_dtype or opts.dtype))
        self.state = state if mesh is None else jax.device_put(state, state_shardings(state, mesh))

    @classmethod
    def on_params(cls, graphdef: nnx.GraphDef, params: dict, *, mesh=None, **kw) -> Generator:
        """A generator over the nested dict `params` as it is (e.g. `TrainState.params`: the
        trainer's sharded arrays, not copied nor moved); assign `.state` the new dict after an
        update (same shapes and shardings: no recompilation). kw: as the constructor."""
        kw.setdefault("weights_dtype", jnp.float32)  # masters as they are: no cast copy
        gen = cls(nnx.merge(graphdef, params), **kw)  # merge references the arrays
        gen.graphdef, gen.state, gen.mesh = graphdef, params, mesh
        return gen

    def prepare(
        self, prompts: Sequence[Sample] | Mapping[str, np.ndarray] | PreparedBatch
    ) -> PreparedBatch:
        """Prompt samples, or processor-format arrays (any padding; converted at the edge by
        `hf_format.samples_from_hf`), -> a `PreparedBatch` in this generator's buckets."""
        if isinstance(prompts, PreparedBatch):
            return prompts
        if isinstance(prompts, Mapping):
            prompts = samples_from_hf(self.cfg, prompts)
        return prepare_batch(
            self.cfg, prompts, length_bucket=self.length_bucket, patch_bucket=self.patch_bucket
        )

    def _mesh_context(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _place_rows(self, x: np.ndarray) -> np.ndarray | jax.Array:
        """A per-row vector int32[B] split over the mesh's batch axes like the inputs."""
        if self.mesh is None:
            return x
        spec = logical_to_spec(("batch",), np.shape(x), self.mesh)
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def start(
        self,
        prompts,
        *,
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        key: jax.Array | int = 0,
        stop_tokens=None,
        pad_token: int | None = None,
        cache_size: int | None = None,
        return_logits: bool = False,
    ):
        """Runs the prefill; returns (DecodeState with the first token, static options, batch)."""
        batch = self.prepare(prompts)
        length = batch.prompt_len
        if cache_size is None:
            cache_size = round_up(length + max(max_new_tokens - 1, 1), self.cache_bucket)
        out_len = cache_size - length + 1
        if max_new_tokens < 1 or max_new_tokens > out_len:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} must be in [1, {out_len}] for a cache of "
                f"{cache_size} slots after a {length}-token prompt bucket"
            )
        if stop_tokens is None:
            stop_tokens = (self.cfg.eos_token_id, self.cfg.bos_token_id)
        stop_tokens = [int(s) for s in stop_tokens]
        if len(stop_tokens) > MAX_STOP_TOKENS:
            raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens, got {len(stop_tokens)}")
        stop = np.full(MAX_STOP_TOKENS, -1, np.int32)
        stop[: len(stop_tokens)] = stop_tokens
        pad = np.int32(self.cfg.bos_token_id if pad_token is None else pad_token)
        st = _Static(sampling, self.opts)
        key = jax.random.key(key) if isinstance(key, int) else key
        with self._mesh_context():
            ds = prefill_fn(
                self.graphdef,
                self.state,
                place(batch.inputs, self.mesh),
                self._place_rows(batch.rope_deltas),
                self._place_rows(batch.num_real),
                key,
                stop,
                pad,
                cache_size=cache_size,
                cache_dtype=self.cache_dtype,
                out_len=out_len,
                return_logits=return_logits,
                st=st,
            )
        return ds, st, batch

    def step(self, ds: DecodeState, st: _Static) -> DecodeState:
        """One compiled decode step (`ds` is donated)."""
        with self._mesh_context():
            return decode_step_fn(self.graphdef, self.state, ds, st=st)

    def generate(self, prompts, *, max_new_tokens: int, **kw) -> GenerateOutput:
        """Generates up to `max_new_tokens` per row in one compiled loop.

        prompts: as `prepare` takes them; kw: as `start` (sampling, key,
        stop_tokens, pad_token, cache_size, return_logits).
        """
        ds, st, batch = self.start(prompts, max_new_tokens=max_new_tokens, **kw)
        return self._output(self.decode(ds, st, max_new_tokens), max_new_tokens, batch)

    def decode(self, ds: DecodeState, st: _Static, max_new_tokens: int) -> DecodeState:
        """The compiled loop from `start`'s state to `max_new_tokens` tokens (`ds` is donated)."""
        with self._mesh_context():
            return decode_loop_fn(self.graphdef, self.state, ds, jnp.int32(max_new_tokens), st=st)

    def stream(self, prompts, *, max_new_tokens: int, **kw) -> Iterator[np.ndarray]:
        """Yields the next tokens int32[B] of every row, one compiled step at a time (rows that
        are done yield `pad_token`); stops after `max_new_tokens` or when every row is done."""
        ds, st, _ = self.start(prompts, max_new_tokens=max_new_tokens, **kw)
        for i in range(max_new_tokens):
            if i:
                ds = self.step(ds, st)
            yield np.asarray(ds.last)
            if bool(np.all(np.asarray(ds.done))):
                return

    @staticmethod
    def _output(ds: DecodeState, n: int, batch: PreparedBatch) -> GenerateOutput:
        tokens = np.asarray(ds.tokens)[:, :n]
        is_stop = np.isin(tokens, np.asarray(ds.stop))
        num = np.where(is_stop.any(1), is_stop.argmax(1) + 1, n)
        logits = None if ds.logits is None else np.asarray(ds.logits)[:, :n]
        logprobs = np.asarray(ds.logprobs)[:, :n]
        return GenerateOutput(tokens, logprobs, logits, num, int(ds.step), batch.prompt_len)
