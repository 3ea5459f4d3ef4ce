"""notebooks/demo.ipynb executes top to bottom (nbclient) on a small demo chip and shows its
figures.
"""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


@pytest.mark.ray
@pytest.mark.slow
def test_demo_notebook_runs(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setenv("STSEG_DEMO_OUT", str(out))
    monkeypatch.setenv("STSEG_DEMO_SIZE_UM", "150")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(
        nb, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    pngs = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(pngs) >= 3, "the label overlay, histograms and expression figures are shown"
    assert json.loads((out / "run" / "run.json").read_text())["status"] == "complete"
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "status: complete" in text
