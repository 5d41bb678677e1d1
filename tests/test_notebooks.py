"""Every notebook is stored with its outputs (figures embedded, volatile metadata stripped), and runs top to
bottom fresh (with BSO_NOTEBOOK_SMOKE=1: tiny settings), writing its figures.

The executing test clears the stored outputs first, so it neither reads nor depends on them, and runs in a
temporary directory. The kernel is the interpreter running the tests: a KernelSpecManager without kernel
directories resolves ``python3`` to ipykernel's native spec, whose argv is ``sys.executable -m
ipykernel_launcher`` — no user-installed kernelspec (``ipykernel install --user``) is needed or used.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FIGURES = {
    "01_quickstart": ["quickstart_curves.png"],
    "02_memory_vs_T": ["memory_vs_T.png"],
    "03_inspect_model": ["flip_history.png", "export_size.png"],
}
#: The first markdown cell says which settings produced the stored outputs.
STORED_WITH = re.compile(r"Stored outputs: .*(normal settings|smoke settings)")


def test_every_notebook_is_covered():
    assert {p.stem for p in NOTEBOOKS} == set(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and STORED_WITH.search(nb.cells[0].source), \
        f"{path.name}: the first markdown cell must say 'Stored outputs: ... (normal settings|smoke settings)'"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and "# Parameters" in code[0].source and "BSO_NOTEBOOK_SMOKE" in code[0].source
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom in one run: {counts}"
    images = [out for cell in code for out in cell.outputs
              if out.output_type in ("display_data", "execute_result") and "image/png" in out.get("data", {})]
    assert len(images) == len(FIGURES[path.stem]), f"{path.name}: {len(images)} embedded figures"
    for cell in nb.cells:
        assert "execution" not in cell.metadata, f"{path.name}: execution timings are stored; strip them"
        for out in cell.get("outputs", []):
            assert not (out.output_type == "stream" and out.name == "stderr"), f"{path.name}: stderr is stored"
            assert out.output_type != "error", f"{path.name}: a stored cell failed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BSO_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # fresh: nothing of the stored run survives into this one
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    spec_manager = KernelSpecManager(kernel_dirs=[])  # native kernel only: this interpreter
    km = KernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=spec_manager)
    client = NotebookClient(nb, km=km, kernel_name=NATIVE_KERNEL_NAME, timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    for figure in FIGURES[path.stem]:
        assert (tmp_path / figure).stat().st_size > 0, figure
