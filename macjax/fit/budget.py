"""Choose the size of ``f_θ`` by a rate budget."""

from __future__ import annotations

from macjax.errors import ConfigError
from macjax.fit.config import FitConfig
from macjax.fit.theta import spec_bits, theta_spec


def width_for_budget(bit_budget: int, shape: tuple[int, int, int], *, max_width: int = 1 << 16, **hyper) -> int:
  """The largest MLP width whose stored θ fits in ``bit_budget`` bits for a family of ``shape``.

  θ's bits grow strictly with the width (every other size fixed by ``hyper``), so this is a bisection over
  ``1 … max_width`` of the exact stored size (:func:`macjax.fit.theta.spec_bits`).

  Args:
    bit_budget: bits available for θ (e.g. ``0.05 * L * rows * cols`` for 0.05 bit/weight).
    shape: ``(L, rows, cols)`` of the family.
    max_width: largest width considered.
    **hyper: the other :class:`~macjax.fit.config.FitConfig` hyper-parameters (``depth``, ``n_fourier``,
      ``tile``, embeddings, ``theta_dtype``; the fit ones do not matter).

  Raises:
    ConfigError: even ``width=1`` needs more than ``bit_budget`` bits (the message says how many).

  Example:
    >>> w = width_for_budget(100_000, (6, 384, 384), depth=2, n_fourier=8, theta_dtype="float16")
    >>> from macjax.fit import functional_fit
    >>> functional_fit(width=w, depth=2, n_fourier=8).bits((6, 384, 384)) <= 100_000
    True
  """
  if "width" in hyper:
    raise ConfigError("width_for_budget: width is what it chooses; do not pass width")

  def bits(width: int) -> int:
    cfg = FitConfig(width=width, **hyper)
    return spec_bits(theta_spec(cfg, cfg.grid(shape)))

  if bits(1) > bit_budget:
    raise ConfigError(f"width_for_budget: bit_budget={bit_budget} for shape {tuple(shape)}; the smallest f_θ "
                      f"(width=1, {hyper}) needs {bits(1)} bits")
  lo, hi = 1, max_width
  if bits(hi) <= bit_budget:
    return hi
  while hi - lo > 1:  # invariant: bits(lo) <= budget < bits(hi)
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if bits(mid) <= bit_budget else (lo, mid)
  return lo
