"""The tiny random-weight model works with the real llama.cpp (llama-cpp-python).

These tests pin down what the rest of the suite relies on when it runs a real
model without network: the file loads, the tokenizer round-trips any text and
parses ChatML's control tokens, the template travels in the metadata, streaming
stops at max_tokens, a JSON-schema grammar yields valid JSON even from noise,
and a damaged file fails with an exception instead of taking the process down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tiny_model import (
    BOS_ID,
    CHATML_TEMPLATE,
    EOS_ID,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
    VOCAB_SIZE,
    byte_token,
    corrupt_copy,
    duplicate_token_copy,
    write_bench_model,
    write_tiny_model,
)

llama_cpp = pytest.importorskip("llama_cpp")

#: Enough for every prompt here; small, so the KV cache costs nothing.
N_CTX = 512

#: Logit biases that keep sampled text to printable ASCII. Left alone, the random
#: model picks stray bytes of multi-byte characters, which llama-cpp-python holds
#: back (it then overshoots max_tokens: 13-19 tokens for max_tokens=12 in 41% of
#: seeds) or drops; and raw control characters, which JSON strings may not hold.
_UNPRINTABLE = [*range(0x00, 0x20), *range(0x7F, 0x100)]
ASCII_ONLY: dict[int, float] = {byte_token(b): -100.0 for b in _UNPRINTABLE} | {
    BOS_ID: -100.0,
    IM_START_ID: -100.0,
}
#: ASCII_ONLY, and never the end of generation: the output runs to max_tokens.
NEVER_STOP: dict[int, float] = ASCII_ONLY | {EOS_ID: -100.0}
#: ASCII_ONLY, and no backslash: a random escape may be a lone surrogate ("\\uDB1a"),
#: which `json` accepts but orjson, Herald's parser, rejects (1 seed in 300).
JSON_SAFE: dict[int, float] = ASCII_ONLY | {byte_token(ord("\\")): -100.0}

#: Strings with maxLength and an array with maxItems: every value is bounded, so a
#: grammar-constrained generation ends within `_MAX_JSON_TOKENS`.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 10},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "done": {"type": "boolean"},
    },
    "required": ["title", "tags", "done"],
    "additionalProperties": False,
}
#: An upper bound on the JSON's tokens: one token a character at most, plus quotes,
#: keys, spaces and punctuation, with room to spare (300 seeds used at most 78).
_MAX_JSON_TOKENS = 200


def _load(path: Path, **options: Any) -> Any:
    """A `Llama` as Herald's local server loads one: quiet, one thread, no per-token logits."""
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=N_CTX, n_threads=1, verbose=False, logits_all=False, **options
    )


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def llama(model_path: Path) -> Iterator[Any]:
    model = _load(model_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def vocab(model_path: Path) -> Iterator[Any]:
    model = _load(model_path, vocab_only=True)
    yield model
    model.close()


# --- the file -------------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """Fixtures may rebuild the model anywhere and get the very same file."""
    first = write_tiny_model(tmp_path / "a.gguf").read_bytes()
    assert write_tiny_model(tmp_path / "b.gguf").read_bytes() == first
    assert write_tiny_model(tmp_path / "c.gguf", seed=1).read_bytes() != first
    assert len(first) < 1_000_000


def test_loads_with_its_metadata(llama: Any) -> None:
    assert llama.n_vocab() == VOCAB_SIZE
    assert llama.n_ctx() == N_CTX
    assert llama.token_bos() == BOS_ID
    assert llama.token_eos() == EOS_ID == IM_END_ID
    meta = llama.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "herald-tiny"
    assert meta["general.license"] == "apache-2.0"
    assert meta["llama.context_length"] == "2048"
    assert meta["tokenizer.ggml.add_bos_token"] == "false"


def test_vocab_only_load_tokenizes(vocab: Any, llama: Any) -> None:
    """Herald's server counts tokens on a vocabulary-only copy: it must agree with the model."""
    text = b"<|im_start|>user\nhello the world<|im_end|>\n"
    assert vocab.tokenize(text, add_bos=True, special=True) == llama.tokenize(
        text, add_bos=True, special=True
    )
    assert vocab.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE


# --- the tokenizer --------------------------------------------------------------

TEXTS = [
    "",
    "hello world",
    "  double  spaces , before . punctuation ! and trailing  ",
    "emoji 🎉👍🏽 and a flag 🇺🇦",
    "中文字符和日本語のテキスト",
    "NUL \x00 in the middle\x00",
    "tabs\tand\r\nnewlines\n\n",
    "e\u0301 combining, \u2581 lower block, \ufeff BOM, \U0010ffff",
    f"{IM_START}user\nforged{IM_END}",
    "the thing being interesting",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(vocab: Any, text: str) -> None:
    data = text.encode()
    tokens = vocab.tokenize(data, add_bos=False, special=False)
    assert vocab.detokenize(tokens) == data
    assert IM_START_ID not in tokens and IM_END_ID not in tokens


@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_round_trip_any_text(vocab: Any, text: str) -> None:
    data = text.encode()
    assert vocab.detokenize(vocab.tokenize(data, add_bos=False, special=False)) == data


def test_control_tokens_only_when_special(vocab: Any) -> None:
    """With special=True a marker is one control token; as plain text it is just bytes."""
    marker = IM_START.encode()
    assert vocab.tokenize(marker, add_bos=False, special=True) == [IM_START_ID]
    assert vocab.tokenize(IM_END.encode(), add_bos=False, special=True) == [IM_END_ID]
    assert vocab.tokenize(marker, add_bos=False, special=False) == [byte_token(b) for b in marker]
    assert vocab.detokenize([IM_END_ID], special=True) == IM_END.encode()
    assert vocab.detokenize([IM_END_ID]) == b""


def test_bos_is_not_added(vocab: Any) -> None:
    """add_bos_token is false (ChatML): asking for BOS adds nothing, as with Qwen."""
    assert vocab.tokenize(b"hi", add_bos=True) == [byte_token(ord("h")), byte_token(ord("i"))]


def test_merges_apply(vocab: Any) -> None:
    """Real BPE merging, not just bytes: " the" is a single token."""
    assert len(vocab.tokenize(b" the", add_bos=False)) == 1
    assert len(vocab.tokenize(b" thing", add_bos=False)) == 3  # " t", "h", "ing"


# --- the chat template ----------------------------------------------------------


def test_chat_template_renders_control_tokens(vocab: Any) -> None:
    template = vocab.metadata["tokenizer.chat_template"]
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template, eos_token=IM_END, bos_token="<s>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = formatter(messages=messages).prompt
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    tokens = vocab.tokenize(prompt.encode(), add_bos=True, special=True)
    assert tokens.count(IM_START_ID) == 3
    assert tokens.count(IM_END_ID) == 2


def test_model_without_template(tmp_path: Path) -> None:
    """An empty template writes none, as in old model files, for "no chat template" paths."""
    model = _load(write_tiny_model(tmp_path / "bare.gguf", chat_template=""), vocab_only=True)
    try:
        assert "tokenizer.chat_template" not in model.metadata
    finally:
        model.close()


# --- generation -----------------------------------------------------------------


def test_streaming_stops_at_max_tokens(llama: Any) -> None:
    prompt = "<|im_start|>user\nSay something.<|im_end|>\n<|im_start|>assistant\n"
    chunks = list(llama.create_completion(prompt, max_tokens=12, stream=True, seed=7, logit_bias=NEVER_STOP))
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 12 + ["length"]
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks)
    assert text and text.isascii()


def test_end_of_turn_stops(llama: Any) -> None:
    """<|im_end|> ends generation: finish_reason "stop", and the marker is not in the text."""
    result = llama.create_completion("Hi", max_tokens=8, seed=0, logit_bias={EOS_ID: 100.0})
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["choices"][0]["text"] == ""
    assert result["usage"]["completion_tokens"] == 0


def test_seeded_generation_repeats(llama: Any) -> None:
    """The same seed gives the same text: tests may assert on it."""

    def run() -> Any:
        return llama.create_completion("Once", max_tokens=8, seed=3, logit_bias=NEVER_STOP)

    first, second = run(), run()
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["usage"]["completion_tokens"] == 8


def test_json_schema_grammar_gives_valid_json(llama: Any) -> None:
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)
    prompt = "<|im_start|>user\nReply in JSON.<|im_end|>\n<|im_start|>assistant\n"
    for seed in (1, 2, 3):
        result = llama.create_completion(
            prompt, max_tokens=_MAX_JSON_TOKENS, seed=seed, grammar=grammar, logit_bias=JSON_SAFE
        )
        choice = result["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(orjson.loads(choice["text"]), SCHEMA)


# --- damaged files --------------------------------------------------------------

#: Loads each file named on the command line and prints one line per file: "ok" or
#: the exception. A llama.cpp abort ends the child, never the test run.
_LOAD_SCRIPT = """
import sys, llama_cpp
for path in sys.argv[1:]:
    try:
        llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=1, verbose=False).close()
        print("ok", flush=True)
    except Exception as exc:
        print(type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
"""


def _load_in_child(*paths: Path) -> subprocess.CompletedProcess[str]:
    # GGML_NO_BACKTRACE: on an abort ggml would otherwise run gdb for a backtrace (~0.6 s).
    return subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GGML_NO_BACKTRACE": "1"},
    )


#: Cut points in the 439 KB tiny model: an empty file, inside the header, inside
#: the metadata, inside the tensor table (~5-6 KB), inside the tensor data (from
#: ~6 KB on), short of the last bytes.
_KEEP = (0.0, 0.00005, 0.001, 0.01, 0.013, 0.5, 0.999)


def test_damaged_files_fail_without_killing_the_caller(model_path: Path, tmp_path: Path) -> None:
    """Truncated files raise ValueError; a duplicate token aborts llama.cpp 0.3.36 itself.

    One child loads them all, the duplicate last (an interpreter start costs up to
    a second on a busy machine). A cut-short download raises wherever it was cut.
    A bad vocabulary hits a GGML_ASSERT and SIGABRT ends the child; llama.cpp's
    master raises instead. Either way only a process that loads models may die.
    """
    truncated = [corrupt_copy(model_path, tmp_path / f"cut-{keep}.gguf", keep=keep) for keep in _KEEP]
    child = _load_in_child(*truncated, duplicate_token_copy(model_path, tmp_path / "dup.gguf"))
    outcomes = [line.split(" ", 1)[0] for line in child.stdout.splitlines()]
    report = (child.returncode, child.stdout, child.stderr[-2000:])
    assert outcomes[: len(_KEEP)] == ["ValueError"] * len(_KEEP), report
    aborted = child.returncode == -signal.SIGABRT and len(outcomes) == len(_KEEP)
    raised = child.returncode == 0 and outcomes[len(_KEEP) :] == ["ValueError"]
    assert aborted or raised, report


def test_truncated_file_raises_in_process(model_path: Path, tmp_path: Path) -> None:
    """Herald's model server loads in its own interpreter and reports the error."""
    broken = corrupt_copy(model_path, tmp_path / "broken.gguf", keep=0.5)
    with pytest.raises(ValueError, match="Failed to load model"):
        _load(broken)


# --- the benchmark model --------------------------------------------------------


def test_bench_model_loads_and_generates(tmp_path: Path) -> None:
    path = write_bench_model(tmp_path / "bench.gguf")
    assert 40_000_000 < path.stat().st_size < 60_000_000
    model = _load(path)
    try:
        result = model.create_completion("Hello", max_tokens=4, seed=0, logit_bias=NEVER_STOP)
        assert result["usage"]["completion_tokens"] == 4
    finally:
        model.close()
