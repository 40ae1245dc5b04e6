"""Repository-wide pytest hook: docstring examples marked ``# doctest: +SKIP`` on every line are illustrations
that need a real model, a file or a long run (``load_model("smollm2-135m")``, an artifact path): documentation, not
tests. They are deselected (the summary counts them), so that the suite reports no skipped tests; every other docstring example runs."""

from __future__ import annotations

import doctest


def pytest_collection_modifyitems(config, items):
  def illustration(item) -> bool:
    test = getattr(item, "dtest", None)
    return test is not None and bool(test.examples) and all(e.options.get(doctest.SKIP) for e in test.examples)
  dropped = [item for item in items if illustration(item)]
  if dropped:  # reported in the summary as deselected, like the `slow` and `torch` marks
    config.hook.pytest_deselected(items=dropped)
    items[:] = [item for item in items if not illustration(item)]
