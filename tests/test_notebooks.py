"""Every notebook runs top to bottom (with BSO_NOTEBOOK_SMOKE=1: tiny settings), writes its figures, and is
stored without outputs.

The kernel is the interpreter running the tests: a KernelSpecManager without kernel directories resolves
``python3`` to ipykernel's native spec, whose argv is ``sys.executable -m ipykernel_launcher`` — no
user-installed kernelspec (``ipykernel install --user``) is needed or used.
"""

from __future__ import annotations

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


def test_every_notebook_is_covered():
    assert {p.stem for p in NOTEBOOKS} == set(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and "# Parameters" in code[0].source and "BSO_NOTEBOOK_SMOKE" in code[0].source
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs; clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("BSO_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    nb = nbformat.read(path, as_version=4)
    spec_manager = KernelSpecManager(kernel_dirs=[])  # native kernel only: this interpreter
    km = KernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=spec_manager)
    client = NotebookClient(nb, km=km, kernel_name=NATIVE_KERNEL_NAME, timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    for figure in FIGURES[path.stem]:
        assert (tmp_path / figure).stat().st_size > 0, figure
