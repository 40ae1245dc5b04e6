"""The shipped notebooks run top to bottom (nbclient, a real kernel) on a tiny checkpoint with small settings (the
MACJAX_NOTEBOOK_MODEL switch in their first cell), so that they never rot; on the real models they take a few
minutes each."""

from __future__ import annotations

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_the_readme_lists_are_there():
  assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "rotation_vs_alignment", "fitting_f_theta", "rd_curves"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  from conftest import TINY_LLAMA_CONFIG, tiny_llama_params, write_hf_folder  # pylint: disable=g-import-not-at-top
  model = write_hf_folder(tmp_path / "tiny", tiny_llama_params(), TINY_LLAMA_CONFIG)
  monkeypatch.setenv("MACJAX_NOTEBOOK_MODEL", str(model))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors
  assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
