"""Build Hugging Face tokenizer files from a GGUF file's ``tokenizer.ggml.*`` metadata, with :mod:`tokenizers`.

``transformers`` cannot convert a GGUF tokenizer without torch, so this module rebuilds it. Supported:
``tokenizer.ggml.model = gpt2`` (byte-level BPE) with the pre-tokenizers ``smollm`` (SmolLM/SmolLM2:
``Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]``), ``gpt2``
(``ByteLevel`` alone), ``qwen2`` (Qwen2/2.5/3) and ``llama-bpe`` (Llama 3): their split pattern, then
``ByteLevel(use_regex=False)``, as ``transformers`` converts these GGUF tokenizers. Tokens whose ``token_type`` is CONTROL (3) become special added tokens, USER_DEFINED (4)
non-special added tokens; no normalizer; a ``ByteLevel`` decoder.

Example:
  >>> files = tokenizer_files_from_gguf(metadata, where="model.gguf")  # doctest: +SKIP
  >>> import tokenizers
  >>> tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())  # doctest: +SKIP
  >>> tok.decode(tok.encode("To be, or not to be").ids)  # doctest: +SKIP
  'To be, or not to be'
"""

from __future__ import annotations

import json
import types
from typing import Callable, Mapping

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from macjax.errors import ModelLoadError

# llama.cpp's token types (gguf.TokenType).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def _smollm_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
  ])


def _gpt2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


# The split patterns of llama.cpp's pre-tokenizers (the same as the models' own tokenizer.json files).
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(pattern: str) -> Callable[[], pre_tokenizers.PreTokenizer]:
  def make():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  return make


# tokenizer.ggml.pre -> factory of the Hugging Face pre-tokenizer it stands for.
PRE_TOKENIZERS: Mapping[str, Callable[[], pre_tokenizers.PreTokenizer]] = types.MappingProxyType({
    "smollm": _smollm_pre_tokenizer,
    "gpt2": _gpt2_pre_tokenizer,
    "qwen2": _split_then_bytes(_QWEN2_SPLIT),
    "deepseek-r1-qwen": _split_then_bytes(_QWEN2_SPLIT),
    "llama-bpe": _split_then_bytes(_LLAMA3_SPLIT),
    "llama3": _split_then_bytes(_LLAMA3_SPLIT),
    "llama-v3": _split_then_bytes(_LLAMA3_SPLIT),
})


def _get(metadata: Mapping[str, object], key: str, where: str, default: object = ...) -> object:
  if key in metadata:
    return metadata[key]
  if default is ...:
    raise ModelLoadError(f"{where}: GGUF metadata lacks {key!r}, needed to build the tokenizer")
  return default


def _token_at(tokens: list[str], key: str, index: object, where: str) -> str | None:
  if index is None:
    return None
  if not isinstance(index, int) or not 0 <= index < len(tokens):
    raise ModelLoadError(f"{where}: {key} = {index!r} is not a token id in [0, {len(tokens)})")
  return tokens[index]


def tokenizer_files_from_gguf(metadata: Mapping[str, object], where: str = "GGUF file") -> dict[str, bytes]:
  """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for a byte-level BPE GGUF.

  Args:
    metadata: GGUF key -> value (python types: str, int, bool, lists), at least ``tokenizer.ggml.model``,
      ``.pre``, ``.tokens``, ``.merges``; optionally ``.token_type``, ``.bos_token_id``, ``.eos_token_id``,
      ``.padding_token_id``, ``.unknown_token_id``, ``.add_bos_token``, ``.add_eos_token``,
      ``tokenizer.chat_template``, ``<arch>.context_length`` (via ``general.architecture``).
    where: the file name, for messages.

  Returns:
    file name -> UTF-8 JSON bytes, loadable by ``tokenizers.Tokenizer.from_str`` and ``transformers.AutoTokenizer``.

  Raises:
    ModelLoadError: an unsupported tokenizer model or pre-tokenizer, a missing key, or inconsistent metadata.

  Example:
    >>> meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2",
    ...         "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}
    >>> sorted(tokenizer_files_from_gguf(meta))
    ['special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']
  """
  model = _get(metadata, "tokenizer.ggml.model", where)
  if model != "gpt2":
    raise ModelLoadError(f"{where}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported")
  pre = _get(metadata, "tokenizer.ggml.pre", where, default="gpt2")
  if pre not in PRE_TOKENIZERS:
    raise ModelLoadError(f"{where}: tokenizer.ggml.pre is {pre!r}; supported: {', '.join(sorted(PRE_TOKENIZERS))}")
  tokens = list(_get(metadata, "tokenizer.ggml.tokens", where))
  merges = list(_get(metadata, "tokenizer.ggml.merges", where))
  token_types = list(_get(metadata, "tokenizer.ggml.token_type", where, default=[TOKEN_NORMAL] * len(tokens)))
  if len(token_types) != len(tokens):
    raise ModelLoadError(f"{where}: tokenizer.ggml.token_type has {len(token_types)} entries; expected "
                         f"{len(tokens)}, one per token")
  vocab = {token: i for i, token in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ModelLoadError(f"{where}: tokenizer.ggml.tokens has {len(tokens) - len(vocab)} duplicate token(s)")
  pairs = []
  for merge in merges:
    parts = merge.split(" ")
    if len(parts) != 2:
      raise ModelLoadError(f"{where}: tokenizer.ggml.merges entry {merge!r} is not two tokens separated by a space")
    pairs.append((parts[0], parts[1]))

  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
  tok.normalizer = None
  tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  added = [tokenizers.AddedToken(t, special=(kind == TOKEN_CONTROL), normalized=False)
           for t, kind in zip(tokens, token_types) if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
  tok.add_tokens(added)
  for t in added:
    if tok.token_to_id(t.content) != vocab[t.content]:
      raise ModelLoadError(f"{where}: added token {t.content!r} got id {tok.token_to_id(t.content)}, expected "
                           f"{vocab[t.content]}")

  bos = _token_at(tokens, "tokenizer.ggml.bos_token_id", metadata.get("tokenizer.ggml.bos_token_id"), where)
  eos = _token_at(tokens, "tokenizer.ggml.eos_token_id", metadata.get("tokenizer.ggml.eos_token_id"), where)
  pad = _token_at(tokens, "tokenizer.ggml.padding_token_id", metadata.get("tokenizer.ggml.padding_token_id"), where)
  unk = _token_at(tokens, "tokenizer.ggml.unknown_token_id", metadata.get("tokenizer.ggml.unknown_token_id"), where)
  add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
  add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
  for flag, token, key in ((add_bos, bos, "bos"), (add_eos, eos, "eos")):
    if flag and token is None:
      raise ModelLoadError(f"{where}: tokenizer.ggml.add_{key}_token is true but there is no {key}_token_id")
  if add_bos or add_eos:
    single = " ".join([*([bos] if add_bos else []), "$A", *([eos] if add_eos else [])])
    pair = " ".join([*([bos] if add_bos else []), "$A", *([eos] if add_eos else []),
                     *([bos] if add_bos else []), "$B:1", *([eos] if add_eos else [])])
    specials = [(t, vocab[t]) for t in dict.fromkeys(x for x, f in ((bos, add_bos), (eos, add_eos)) if f)]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

  special_map = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                                   ("pad_token", pad)) if v is not None}
  arch = metadata.get("general.architecture")
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      **special_map,
      "add_bos_token": add_bos,
      "add_eos_token": add_eos,
      "add_prefix_space": False,
      "clean_up_tokenization_spaces": False,
  }
  if f"{arch}.context_length" in metadata:
    config["model_max_length"] = int(metadata[f"{arch}.context_length"])
  if "tokenizer.chat_template" in metadata:
    config["chat_template"] = metadata["tokenizer.chat_template"]
  return {
      "tokenizer.json": tok.to_str(pretty=True).encode("utf-8"),
      "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
      "special_tokens_map.json": (json.dumps(special_map, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
  }
