"""Tiny random-weight llama.cpp models, written on the spot, for tests without network.

`write_tiny_model` writes a GGUF file with the `gguf` package's `GGUFWriter`: the
"llama" architecture with f32 weights drawn from numpy's seeded RNG (the same
arguments give the same bytes), and a real tokenizer that llama.cpp loads as it
loads any downloaded model. The weights are noise, so the text is noise too, but
everything around it is genuine: loading, tokenizing, the chat template, special
tokens, streaming, grammars, context limits.

The tokenizer is GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`):
the 256 byte tokens make any UTF-8 text round-trip exactly (emoji, CJK, NUL,
U+2581 included). It deliberately is not SentencePiece ("llama"): llama.cpp's
SPM tokenizer writes spaces as U+2581 and decodes every U+2581 back to a space,
so an SPM vocabulary cannot round-trip arbitrary text. The pre-tokenizer is
"qwen2", one that keeps spaces before punctuation when llama.cpp decodes a whole
sequence (`llama_detokenize`, as llama.cpp's own server does): with "default" or
"gpt-2", "x ." comes back as "x.".

Token ids (the same for every size):

- 0..255: the bytes 0x00..0xFF, in order (`byte_token(b) == b`);
- 256..: the few merged tokens of `MERGES` (" the", "ing", two spaces, …);
- `BOS_ID` ("<s>"), `IM_START_ID` ("<|im_start|>"), `IM_END_ID` ("<|im_end|>"),
  all CONTROL tokens. EOS is "<|im_end|>", as in ChatML models, and the only
  end-of-generation token. `tokenizer.ggml.add_bos_token` is false by default,
  as in ChatML models: the template starts with "<|im_start|>", not with BOS.

Sizes: the default model is about 0.45 MB; `BENCH_MODEL` (used by
`write_bench_model`) gives about 48 MB.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Final, TypedDict

import gguf
import numpy as np
import numpy.typing as npt

__all__ = [
    "BENCH_MODEL",
    "BOS_ID",
    "CHATML_TEMPLATE",
    "EOS_ID",
    "IM_END",
    "IM_END_ID",
    "IM_START",
    "IM_START_ID",
    "MERGES",
    "VOCAB_SIZE",
    "ModelShape",
    "byte_token",
    "corrupt_copy",
    "duplicate_token_copy",
    "plain_text_tokens",
    "write_bench_model",
    "write_tiny_model",
]

IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"
BOS: Final = "<s>"

#: ChatML, the template of Qwen and many others: every turn opens with
#: <|im_start|>role and closes with <|im_end|>; no BOS.
CHATML_TEMPLATE: Final = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

#: A handful of BPE merges, in rank order, so that merging really happens: " the"
#: is one token, not four. Written in the byte alphabet ("Ġ" is a space).
MERGES: Final = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("in", "g"),
    ("e", "r"),
    ("Ġ", "Ġ"),
    ('"', ":"),
)

_N_BYTES: Final = 256
BOS_ID: Final = _N_BYTES + len(MERGES)
IM_START_ID: Final = BOS_ID + 1
IM_END_ID: Final = BOS_ID + 2
EOS_ID: Final = IM_END_ID
VOCAB_SIZE: Final = IM_END_ID + 1


class ModelShape(TypedDict):
    """The size arguments of `write_tiny_model`."""

    layers: int
    embedding: int
    heads: int
    kv_heads: int
    feed_forward: int


#: Arguments of `write_tiny_model` for a model of about 48 MB (12M parameters), for
#: benchmarks that want the model's own time to be visible.
BENCH_MODEL: Final[ModelShape] = {
    "layers": 4,
    "embedding": 512,
    "heads": 8,
    "kv_heads": 4,
    "feed_forward": 1408,
}

#: The weights' spread: small, like a freshly initialised model, so that every
#: token stays possible and sampling is really random.
_WEIGHT_STD: Final = 0.02


def byte_token(value: int) -> int:
    """The token id of one byte: the vocabulary starts with the 256 bytes in order."""
    if not 0 <= value < _N_BYTES:
        raise ValueError(f"not a byte: {value}")
    return value


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, indexed by byte.

    Byte-level BPE vocabularies store tokens as text, so every byte needs a
    visible character: printable Latin-1 bytes stand for themselves, and the
    others (controls, space, …) take the characters from U+0100 on, in order.
    llama.cpp maps them back to bytes when it decodes.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet: dict[int, str] = {value: chr(value) for value in printable}
    substitutes = iter(range(_N_BYTES, 2 * _N_BYTES))
    for value in range(_N_BYTES):
        if value not in alphabet:
            alphabet[value] = chr(next(substitutes))
    return [alphabet[value] for value in range(_N_BYTES)]


def _vocabulary() -> tuple[list[str], list[gguf.TokenType]]:
    """Token texts and types, in id order (see the module docstring)."""
    tokens = _byte_alphabet() + [left + right for left, right in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += [BOS, IM_START, IM_END]
    types += [gguf.TokenType.CONTROL] * 3
    assert len(tokens) == VOCAB_SIZE
    return tokens, types


def _add_tokenizer(writer: gguf.GGUFWriter, chat_template: str, add_bos: bool) -> None:
    """Byte-level BPE with ChatML control tokens; the ids are the module's constants."""
    tokens, types = _vocabulary()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{left} {right}" for left, right in MERGES])
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_eot_token_id(IM_END_ID)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)


def _add_hyperparameters(
    writer: gguf.GGUFWriter,
    *,
    layers: int,
    embedding: int,
    heads: int,
    kv_heads: int,
    feed_forward: int,
    context: int,
) -> None:
    """The llama hyperparameters llama.cpp reads to build the graph for these tensors."""
    writer.add_context_length(context)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def plain_text_tokens() -> list[int]:
    """The tokens a `text_only` model writes: printable ASCII but the backslash, and
    the merged tokens (all printable)."""
    printable = [b for b in range(ord(" "), ord("~") + 1) if b != ord("\\")]
    return printable + list(range(_N_BYTES, BOS_ID))


def _weights(
    rng: np.random.Generator,
    *,
    layers: int,
    embedding: int,
    heads: int,
    kv_heads: int,
    feed_forward: int,
    text_only: bool,
) -> dict[str, npt.NDArray[np.float32]]:
    """The llama tensors by GGUF name, drawn in a fixed order.

    numpy shapes are (rows, columns) = (outputs, inputs); GGUF stores them reversed,
    which is the order llama.cpp expects ({inputs, outputs}).

    `text_only`: the model writes only `plain_text_tokens()`, never a control token,
    a stray byte of a multi-byte character or a control character. Noise over all
    267 tokens would stall a stream (llama.cpp holds back bytes until they make a
    character) and never end. Built into the weights, not asked per request: the
    residual stream's first dimension is a constant that no layer writes to, and
    the output row of every other token weighs it strongly negative.
    """
    head_dim = embedding // heads

    def noise(*shape: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(_WEIGHT_STD)

    def ones(size: int) -> npt.NDArray[np.float32]:
        return np.ones(size, dtype=np.float32)

    tensors = {"token_embd.weight": noise(VOCAB_SIZE, embedding)}
    for layer in range(layers):
        block = f"blk.{layer}"
        tensors |= {
            f"{block}.attn_norm.weight": ones(embedding),
            f"{block}.attn_q.weight": noise(heads * head_dim, embedding),
            f"{block}.attn_k.weight": noise(kv_heads * head_dim, embedding),
            f"{block}.attn_v.weight": noise(kv_heads * head_dim, embedding),
            f"{block}.attn_output.weight": noise(embedding, heads * head_dim),
            f"{block}.ffn_norm.weight": ones(embedding),
            f"{block}.ffn_gate.weight": noise(feed_forward, embedding),
            f"{block}.ffn_up.weight": noise(feed_forward, embedding),
            f"{block}.ffn_down.weight": noise(embedding, feed_forward),
        }
    tensors["output_norm.weight"] = ones(embedding)
    tensors["output.weight"] = noise(VOCAB_SIZE, embedding)
    if text_only:
        tensors["token_embd.weight"][:, 0] = 1.0  # after RMS norm: about √embedding
        for layer in range(layers):
            tensors[f"blk.{layer}.attn_output.weight"][0, :] = 0.0
            tensors[f"blk.{layer}.ffn_down.weight"][0, :] = 0.0
        unwanted = np.ones(VOCAB_SIZE, dtype=bool)
        unwanted[plain_text_tokens()] = False
        tensors["output.weight"][unwanted, 0] = -4.0  # a logit about 4·√embedding lower
    return tensors


def write_tiny_model(
    path: Path,
    *,
    layers: int = 2,
    embedding: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    feed_forward: int = 128,
    context: int = 2048,
    seed: int = 0,
    chat_template: str = CHATML_TEMPLATE,
    add_bos: bool = False,
    name: str = "herald-tiny",
    text_only: bool = True,
) -> Path:
    """Write a random-weight llama GGUF model to `path` and return `path`.

    `context` is the model's trained context (`llama.context_length`); a `Llama`
    may use any `n_ctx` up to it. `heads` must divide `embedding` and `kv_heads`
    must divide `heads` (grouped-query attention, as in current models). An empty
    `chat_template` writes no template at all, like old model files. The same
    arguments always give the same bytes (with the same numpy: the RNG stream is
    numpy's `default_rng`).
    """
    if embedding % heads or heads % kv_heads:
        raise ValueError("heads must divide embedding, and kv_heads must divide heads")
    shape: ModelShape = {
        "layers": layers,
        "embedding": embedding,
        "heads": heads,
        "kv_heads": kv_heads,
        "feed_forward": feed_forward,
    }
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_license("apache-2.0")
    _add_hyperparameters(writer, context=context, **shape)
    _add_tokenizer(writer, chat_template, add_bos)
    for tensor_name, tensor in _weights(np.random.default_rng(seed), text_only=text_only, **shape).items():
        writer.add_tensor(tensor_name, tensor)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def write_bench_model(path: Path, *, seed: int = 0) -> Path:
    """A ~48 MB model (`BENCH_MODEL`): slow enough that its own time shows in a benchmark."""
    return write_tiny_model(path, seed=seed, name="herald-bench", **BENCH_MODEL)


def corrupt_copy(source: Path, destination: Path, *, keep: float = 0.5) -> Path:
    """Copy a model cut short after `keep` of its bytes: a download that stopped halfway.

    The header and metadata stay readable (for a `keep` that covers them), so the
    loader gets as far as the tensor data before it finds the file too short.
    """
    if not 0.0 <= keep < 1.0:
        raise ValueError("keep must be in [0, 1)")
    data = source.read_bytes()
    destination.write_bytes(data[: int(len(data) * keep)])
    return destination


def duplicate_token_copy(source: Path, destination: Path) -> Path:
    """Copy a model whose vocabulary lists one token twice: well-formed GGUF, bad contents.

    The merged token "in" is renamed "er", which the vocabulary already has. The
    llama.cpp in llama-cpp-python 0.3.36 does not raise on this: a GGML_ASSERT
    aborts the whole process (SIGABRT); llama.cpp's master raises an error instead.
    Load such a file only in a child process.
    """
    data = source.read_bytes()
    # GGUF strings are a little-endian u64 length, then the UTF-8 bytes.
    original, duplicate = struct.pack("<Q", 2) + b"in", struct.pack("<Q", 2) + b"er"
    if data.count(original) != 1:
        raise ValueError(f"{source} is not a tiny model: the token 'in' is not where expected")
    destination.write_bytes(data.replace(original, duplicate))
    return destination
