"""The SpatialData store opens in the pinned scverse stack of a clean venv (``make compat-venv``):
spatialdata 0.7.3 and sopa 2.2.11 read it, sopa recounts the same transcripts per cell, and
spatialdata-plot colours the cell labels by a table column.

The store is written here by the project's own venv; tests/compat/check_store.py reads it in the
other venv, which has no stseg and no torch. Skips, saying why, where that venv is not built
(CI builds it: ``make test`` depends on it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("spatialdata")

COMPAT_PYTHON = Path(
    os.environ.get("STSEG_COMPAT_PYTHON", REPO / ".venv-compat" / "bin" / "python")
)
CHECK = REPO / "tests" / "compat" / "check_store.py"


@pytest.fixture(scope="module")
def seen(request, tmp_path_factory):
    if not COMPAT_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COMPAT_PYTHON} missing in CI: `make test` builds it (make compat-venv)")
        pytest.skip(f"{COMPAT_PYTHON} not built: run `make compat-venv` (a clean venv, minutes)")
    from stseg_dist.export import open_run
    from stseg_dist.export.spatialdata import write_spatialdata

    chip, run = request.getfixturevalue("small_run")  # only once the venv is there
    tmp = tmp_path_factory.mktemp("ecosystem")
    store = tmp / "spatialdata.zarr"
    write_spatialdata(open_run(str(run), str(chip)), store)
    proc = subprocess.run(
        [str(COMPAT_PYTHON), str(CHECK), str(store), str(tmp / "labels.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), run


def test_pinned_versions(seen):
    out, _ = seen
    assert out["versions"]["spatialdata"] == "0.7.3" and out["versions"]["sopa"] == "2.2.11"


def test_spatialdata_reads_every_element_with_channel_names(seen):
    out, _ = seen
    assert out["elements"] == [
        "images/image",
        "labels/cell_labels",
        "labels/nucleus_labels",
        "points/transcripts",
        "shapes/cell_boundaries",
        "shapes/nucleus_boundaries",
        "tables/cell_labels_table",
        "tables/table",
    ]
    assert out["channels"] == ["DAPI"]


def test_sopa_finds_the_elements_and_recounts_the_same_transcripts(seen):
    import pandas as pd

    out, run = seen
    n_cells = len(pd.read_parquet(run / "cells.parquet"))
    assert out["sopa_channels"] == ["DAPI"] and out["sopa_image_shape"][0] == 1
    assert out["sopa_boundaries"] == ["cell_boundaries", n_cells]
    assert out["sopa_feature_key"] == "gene"
    agg = out["sopa_aggregate"]
    assert agg["n_cells"] == n_cells and agg["total"] == agg["ours_total"] > 0
    assert agg["cells_equal_share"] == 1.0


def test_spatialdata_plot_colours_labels_by_a_table_column(seen):
    out, _ = seen
    # one colour per distinct n_transcripts value: the labels really are coloured by the table
    assert out["table_distinct_values"] > 5
    assert out["plot_distinct_colours"] >= 0.8 * out["table_distinct_values"]
