"""Repository-wide pytest hook: docstring examples marked ``# doctest: +SKIP`` on every line are illustrations
that need a real model, a file or a long run (``load_model("smollm2-135m")``, an artifact path): documentation, not
tests. They are not collected, so that the suite reports no skipped tests; every other docstring example runs."""

from __future__ import annotations

import doctest


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  def illustration(item) -> bool:
    test = getattr(item, "dtest", None)
    return test is not None and bool(test.examples) and all(e.options.get(doctest.SKIP) for e in test.examples)
  items[:] = [item for item in items if not illustration(item)]
