"""Execute a notebook and store it with its outputs (figures embedded), volatile parts stripped.

    OMP_NUM_THREADS=1 python notebooks/store_outputs.py notebooks/02_memory_vs_T.ipynb [--smoke] [--note TEXT]

Runs on a kernel of this interpreter in a temporary directory (the figure files land there, not in the
repository), with the inline matplotlib backend so every ``plt.show()`` embeds its PNG. Execution timings and
stderr (progress bars, warnings naming temporary paths) are dropped so that diffs stay small; the notebook's
own metadata is kept as it was. ``--note`` replaces the "Stored outputs: ..." line of the first markdown cell
(``tests/test_notebooks.py`` requires one). The tests never read these outputs: they execute every notebook
afresh with ``BSO_NOTEBOOK_SMOKE=1``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTE_PREFIX = "Stored outputs: "


def execute(path: Path, smoke: bool, timeout: int = 600) -> tuple[nbformat.NotebookNode, float]:
    """The executed notebook (outputs stripped of stderr and timings) and its wall time in seconds."""
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.setdefault("WANDB_MODE", "offline")
    if smoke:
        os.environ["BSO_NOTEBOOK_SMOKE"] = "1"
    else:
        os.environ.pop("BSO_NOTEBOOK_SMOKE", None)
    nb = nbformat.read(path, as_version=4)
    metadata = copy.deepcopy(nb.metadata)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    km = KernelManager(kernel_name=NATIVE_KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, kernel_name=NATIVE_KERNEL_NAME, timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": tempfile.mkdtemp(prefix="bso_notebook_")}})
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    nb.metadata = metadata
    return nb, wall


def set_note(nb: nbformat.NotebookNode, note: str) -> None:
    """Replace the "Stored outputs: ..." line of the first (markdown) cell."""
    first = nb.cells[0]
    if first.cell_type != "markdown":
        raise ValueError("the first cell must be markdown (it says how the stored outputs were produced)")
    lines = [line for line in first.source.split("\n") if not line.startswith(NOTE_PREFIX)]
    first.source = "\n".join(lines).rstrip("\n") + "\n\n" + NOTE_PREFIX + note


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--smoke", action="store_true", help="BSO_NOTEBOOK_SMOKE=1: the test suite's tiny settings")
    parser.add_argument("--note", help="text after 'Stored outputs: ' (default: settings and wall time)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    nb, wall = execute(args.notebook, args.smoke)
    settings = "smoke settings (BSO_NOTEBOOK_SMOKE=1)" if args.smoke else "normal settings (the parameters below)"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    set_note(nb, args.note or (f"produced with the {settings} by `notebooks/store_outputs.py`, CPU, "
                               f"OMP_NUM_THREADS={threads}, {started}: {wall:.0f} s wall (1-min load average "
                               f"{load:.1f} at the start). The test suite executes the notebook afresh with "
                               f"`BSO_NOTEBOOK_SMOKE=1`."))
    nbformat.validate(nb)
    nbformat.write(nb, args.notebook)
    print(f"{args.notebook}: {wall:.1f} s wall")


if __name__ == "__main__":
    main()
