"""What a loaded model is: a flat ``{name: array}`` pytree plus a description of its layout.

Names are always those of the model's Hugging Face checkpoint, whatever file they were read from, and matrices
are ``(out_features, in_features)`` as ``torch.nn.Linear`` stores them (GPT-2's ``Conv1D`` weights, stored
``(in, out)``, are transposed on load and back on export), so that every later stage, the exporter and the JAX
forwards agree on one naming and one layout.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from macjax.load.architectures import BY_NAME, FAMILIES, MATRIX_ROLES  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class MatrixInfo:
  """One transformer-block weight matrix.

  Attributes:
    name: tensor name in the Hugging Face layout, e.g. ``model.layers.3.self_attn.q_proj.weight``.
    role: one of :data:`MATRIX_ROLES` (attention q, k, v, o or fused qkv; MLP gate, up, down or fused gate_up;
      a mixture-of-experts router).
    layer: index of the transformer block, ``0 <= layer < num_layers``.
    shape: ``(out_features, in_features)``.
    expert: the expert index of a mixture-of-experts expert's matrix, else None.
  """

  name: str
  role: str
  layer: int
  shape: tuple[int, int]
  expert: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelLayout:
  """The structure of a model, enough to group its matrices and to run or export it.

  Attributes:
    family: the architecture (:data:`FAMILIES`: ``"llama"``, ``"qwen2"``, ``"gpt2"``, ``"bert"`` ...).
    num_layers: number of transformer blocks.
    matrices: every transformer-block weight matrix, ordered by (layer, the architecture's rule order, expert).
    config: the model's Hugging Face ``config.json`` as a dict (what ``transformers`` needs to build the model).
    name_prefix: prefix of every base-model tensor name in the checkpoint: ``""`` except for BERT checkpoints
      saved with a head (``BertForMaskedLM`` ...), whose names start with ``"bert."``, and GPT-2 checkpoints saved
      by ``GPT2LMHeadModel`` (``"transformer."``); e.g. the word embeddings are
      ``layout.name_prefix + "embeddings.word_embeddings.weight"``. Matrix names already include it.
  """

  family: str
  num_layers: int
  matrices: tuple[MatrixInfo, ...]
  config: Mapping[str, object]
  name_prefix: str = ""

  def by_role(self, role: str) -> tuple[MatrixInfo, ...]:
    """The matrices of one role across layers, in layer order (a *family* of matrices for ``f_θ``)."""
    return tuple(m for m in self.matrices if m.role == role)

  def families(self, across: str = "layers") -> dict[str, tuple[MatrixInfo, ...]]:
    """Groups of same-role, same-shape matrices that share a transform state or an ``f_θ`` (``{name: members}``).

    ``across="layers"``: one family per role of the dense matrices (named by the role, e.g. ``"q"``) and one per
    role of the experts (``"gate.experts"``: every layer's experts, layer-major); ``across="experts"``: the
    experts' families are per layer instead (``"gate.experts.3"``: layer 3's experts, the index being the
    expert). Members of different shapes are split further (``"down@32x40"``). Families are ordered by
    :data:`MATRIX_ROLES`, dense before experts, then by layer.

    Example:
      >>> m = (MatrixInfo("a", "q", 0, (4, 4)), MatrixInfo("b", "q", 1, (4, 4)))
      >>> list(ModelLayout("llama", 2, m, {}).families())
      ['q']
    """
    if across not in ("layers", "experts"):
      raise ValueError(f"families: across={across!r}; expected 'layers' or 'experts'")
    groups: dict[tuple, list[MatrixInfo]] = {}
    for m in self.matrices:
      if m.expert is None:
        key = (MATRIX_ROLES.index(m.role), 0, -1, m.role)
      else:
        layer = m.layer if across == "experts" else -1
        key = (MATRIX_ROLES.index(m.role), 1, layer, f"{m.role}.experts" + (f".{m.layer}" if layer >= 0 else ""))
      groups.setdefault(key, []).append(m)
    out = {}
    for key in sorted(groups):
      members = groups[key]
      shapes = sorted({tuple(m.shape) for m in members})
      for shape in shapes:
        name = key[3] if len(shapes) == 1 else f"{key[3]}@{shape[0]}x{shape[1]}"
        out[name] = tuple(m for m in members if tuple(m.shape) == shape)
    return out

  @property
  def matrix_names(self) -> frozenset[str]:
    return frozenset(m.name for m in self.matrices)

  @property
  def kind(self) -> str:
    """``"decoder"`` (a causal LM) or ``"encoder"`` (BERT)."""
    return BY_NAME[self.family].kind

  @property
  def block_prefix(self) -> str:
    """The name prefix of transformer block ``N``'s tensors, without the ``N.``: ``model.layers.`` (LLaMA and
    most decoders), ``encoder.layer.`` (BERT), ``transformer.h.`` (GPT-2), after :attr:`name_prefix`."""
    return self.name_prefix + BY_NAME[self.family].block_prefix

  def layer_of(self, name: str) -> int | None:
    """The transformer block a tensor belongs to (its matrices, norms, biases), or None for tensors outside the
    blocks (embeddings, final norm, LM head, task heads).

    Example:
      >>> ModelLayout("llama", 2, (), {}).layer_of("model.layers.1.input_layernorm.weight")
      1
    """
    prefix = self.block_prefix
    if not name.startswith(prefix):
      return None
    head = name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() and int(head) < self.num_layers else None

  def to_json(self) -> dict:
    """A JSON-able dict; :meth:`from_json` inverts it exactly."""
    d = dataclasses.asdict(self)
    d["config"] = dict(self.config)
    return d

  @classmethod
  def from_json(cls, d: Mapping[str, object]) -> "ModelLayout":
    """Rebuilds a layout from :meth:`to_json`'s output.

    Raises:
      ValueError: a field is missing or of the wrong type.
    """
    try:
      mats = tuple(MatrixInfo(name=str(m["name"]), role=str(m["role"]), layer=int(m["layer"]),
                              shape=tuple(int(s) for s in m["shape"]),
                              expert=None if m.get("expert") is None else int(m["expert"])) for m in d["matrices"])
      family = str(d["family"])
      if family not in BY_NAME:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
      return cls(family=family, num_layers=int(d["num_layers"]), matrices=mats, config=dict(d["config"]),
                 name_prefix=str(d.get("name_prefix", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise ValueError(f"malformed model layout record: {e}") from e


@dataclasses.dataclass
class Model:
  """A loaded model.

  Attributes:
    params: every tensor of the checkpoint, HF names, float32 numpy arrays in HF layout.
    layout: the model's :class:`ModelLayout`.
    source: where it came from (alias or path), for reports and artifact metadata.
    tokenizer_files: file name -> bytes of the Hugging Face tokenizer files (``tokenizer.json``,
      ``tokenizer_config.json``, ``special_tokens_map.json``, ``vocab.txt`` ...), enough for
      ``transformers.AutoTokenizer`` and for :mod:`tokenizers` to load.
    source_dtypes: tensor name -> how the source file stored it (``"F32"``, ``"BF16"``, GGUF types such as
      ``"Q4_1"``). Weights read from a quantized GGUF sit on that quantizer's grid: reports should say so, and no
      method should be tuned to that grid.
    tokenizer_error: why ``tokenizer_files`` is empty (a GGUF tokenizer that cannot be rebuilt), else None:
      stages that need text (calibration, evaluation) then fail with this reason; the others work.
  """

  params: dict[str, np.ndarray]
  layout: ModelLayout
  source: str
  tokenizer_files: dict[str, bytes]
  source_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)
  tokenizer_error: str | None = None

  @property
  def num_params(self) -> int:
    """Every parameter of the checkpoint (from the headers when the params are lazy: nothing is read)."""
    from macjax.load.lazy import shape_of  # pylint: disable=g-import-not-at-top
    return int(sum(int(np.prod(shape_of(self.params, n), dtype=np.int64)) for n in self.params))
