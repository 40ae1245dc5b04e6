"""What a long run tells the person watching it: short lines, and a bar with an ETA per loop.

The library never prints on its own: the CLI builds a :class:`Progress` that writes to stderr (a tqdm bar when
stderr is a terminal, nothing for the bar otherwise); library callers get a silent one by default.

Example:
  >>> p = Progress()  # silent
  >>> [x for x in p.bar([1, 2], desc="units")]
  [1, 2]
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


class Progress:
  """Progress reporting.

  Args:
    say: called with one line per stage (None: silent).
    bars: draw a tqdm bar for loops (on stderr, only when it is a terminal).
  """

  def __init__(self, say: Callable[[str], None] | None = None, bars: bool = False):
    self.say_fn = say
    self.bars = bars

  def say(self, message: str) -> None:
    if self.say_fn is not None:
      self.say_fn(message)

  def bar(self, items: Iterable[T], *, desc: str, unit: str = "it") -> Iterable[T]:
    """``items``, with a bar and an ETA while they are consumed (when bars are on and stderr is a terminal)."""
    if not self.bars:
      return items
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)
