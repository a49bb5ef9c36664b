"""The notebooks run top to bottom in small mode, and are committed without outputs.

Each notebook is executed in memory (never written back) by a kernel started with this
interpreter, with `notebooks/` as working directory, `NMT_NOTEBOOK_SMALL=1` and a temporary
`TMPDIR` that receives the run directories the notebooks make.
"""

from __future__ import annotations

import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = [
    "01_data_and_tokenization.ipynb",
    "02_train_and_translate.ipynb",
    "03_context_vector_vs_attention.ipynb",
]
# Per cell; small mode runs a whole notebook in about a minute on 2 CPU cores.
CELL_TIMEOUT_S = 600


def _read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs"
    assert 'os.environ.get("NMT_NOTEBOOK_SMALL", "1") == "1"' in code[0].source


def _snapshot(folder):
    """Path -> (size, mtime) of every file under `folder`."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def _this_python_kernel():
    """A kernel manager that starts ipykernel with `sys.executable`, whatever `python3`
    kernelspec (user-wide, system-wide) would otherwise be found first."""
    spec = KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name=f"Python ({sys.executable})",
        language="python",
    )

    class ThisPythonKernelManager(KernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            return spec

    return ThisPythonKernelManager(kernel_name="python3")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, multi30k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("NMT_MULTI30K_DIR", str(multi30k_dir))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = _read(name)
    before = _snapshot(NOTEBOOK_DIR)
    client = NotebookClient(
        nb,
        km=_this_python_kernel(),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    code = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
    # Every code cell ran, once and in order, and none recorded an error.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"{name}: {errors}"
    images = sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert images >= 1, f"{name} drew no figure"
    # The notebook made its work directory under TMPDIR and wrote nothing beside itself.
    work = [path for path in tmp_path.glob("nmt-nb*") if path.is_dir() and any(path.iterdir())]
    assert work, f"{name} made no work directory under TMPDIR"
    assert _snapshot(NOTEBOOK_DIR) == before, f"{name} changed files in notebooks/"
