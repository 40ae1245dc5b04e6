"""Shipped notebooks are valid nbformat JSON and their code compiles against the current API names."""

from __future__ import annotations

import ast
import importlib
import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_compiles_and_imports_resolve(path):
  nb = json.loads(path.read_text())
  assert nb["nbformat"] == 4
  for cell in nb["cells"]:
    if cell["cell_type"] != "code":
      continue
    tree = ast.parse("".join(cell["source"]))
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module.startswith("macjax"):
        module = importlib.import_module(node.module)
        for alias in node.names:
          assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
              f"{path.name}: {node.module} has no {alias.name}")
