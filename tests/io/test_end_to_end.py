"""``stseg run --input CROP --platform auto`` on every shared real crop, through the CLI.

Each test checks that the platform is detected, that every transcript the reader keeps appears
exactly once in OUT/transcripts.parquet (same per-gene counts as an independent reading of the
vendor file) and that cells were found.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stseg_dist.cli import main
from tests.conftest import shared_data

pytestmark = pytest.mark.realdata


def run_cli(bundle: Path, out: Path, *extra: str) -> dict:
    """``stseg run --input BUNDLE --platform auto --local`` in this process; returns run.json."""
    rc = main(
        [
            "run",
            "--input",
            str(bundle),
            "--platform",
            "auto",
            "--out",
            str(out),
            "--local",
            "--no-progress",
            *extra,
        ]
    )
    assert rc == 0
    return json.loads((out / "run.json").read_text())


def check_accounting(
    out: Path, run: dict, platform: str, expected_genes: pd.Series
) -> pd.DataFrame:
    """Every kept transcript once: input rows 0..n-1 each once, per-gene counts as in the raw
    file.
    """
    assert run["status"] == "complete" and run["chip_meta"]["platform"] == platform
    t = pq.read_table(out / "transcripts.parquet").to_pandas()
    assert len(t) == expected_genes.sum() == run["counts"]["n_transcripts"]
    assert np.array_equal(np.sort(t.input_row.to_numpy()), np.arange(len(t)))
    got = t.gene.astype(str).value_counts().sort_index()
    pd.testing.assert_series_equal(got, expected_genes.sort_index(), check_names=False)
    assert run["counts"]["n_cells"] > 0 and (t.cell_id > 0).mean() > 0.2
    return t


def test_xenium_preview_runs_with_vendor_nuclei(tmp_path):
    bundle = shared_data("xenium_lung_preview")
    run = run_cli(bundle, tmp_path / "o")
    raw = pq.read_table(bundle / "transcripts.parquet").to_pandas()
    ctrl = raw.feature_name.str.match(r"(NegControl|antisense_|BLANK_|Unassigned|Deprecated)")
    kept = raw[(raw.qv >= 20) & ~ctrl]
    t = check_accounting(tmp_path / "o", run, "xenium", kept.feature_name.value_counts())
    assert set(t.transcript_id) == set(kept.transcript_id)
    rep = json.loads((tmp_path / "o" / "_work" / "input_chip" / "convert_report.json").read_text())
    assert rep["dropped"] == {
        "low_qv": int(((raw.qv < 20) & ~ctrl).sum()),
        "control_probe": int(ctrl.sum()),
    }
    # No image: the vendor nuclei were used, one cell per vendor nucleus.
    assert run["config"]["nuclei"]["backend"] == "vendor" and run["counts"]["n_cells"] == 135


def test_cosmx_crop_with_reader_options(tmp_path):
    bundle = shared_data("cosmx_lung12_fov2")
    run = run_cli(
        bundle,
        tmp_path / "o",
        "--reader-option",
        "pixel_size_um=0.18",
        "--reader-option",
        'image_offset_px={"x": 4800, "y_top": 3648}',
    )
    raw = pd.read_csv(bundle / "Lung12_tx_file.csv")
    kept = raw[~raw.target.str.startswith(("NegPrb", "SystemControl"))]
    t = check_accounting(tmp_path / "o", run, "cosmx", kept.target.value_counts())
    # Vendor nuclei rebuilt from CellComp == "Nuclear" are the default (nuclei.backend=auto).
    assert run["config"]["nuclei"]["backend"] == "vendor" and run["nuclei"]["requested"] == "auto"
    # Cells grown from them hold most of the transcripts the vendor put in cells.
    assert (t.cell_id[t.vendor_cell_label > 0] > 0).mean() > 0.7


def test_merscope_mini_with_bounds_and_downsampling(tmp_path):
    bundle = shared_data("merscope_mousebrain")
    run = run_cli(
        bundle,
        tmp_path / "o",
        "--reader-option",
        "image_bounds_um=[6400, 4700, 6900, 5150]",
        "--reader-option",
        "image_downsample=4",
    )
    raw = pd.read_csv(bundle / "vizgen_transcripts.gz")
    kept = raw[~raw.gene.str.startswith("Blank-")]
    check_accounting(tmp_path / "o", run, "merscope", kept.gene.value_counts())
    assert run["chip_meta"]["pixel_size_um"] == pytest.approx(4 * 0.1086, rel=1e-2)
    assert run["counts"]["n_cells"] > 150


def test_stereoseq_gem_without_stain(tmp_path):
    bundle = shared_data("stereoseq_gem_mousebrain")
    run = run_cli(bundle, tmp_path / "o")
    raw = pd.read_csv(next(bundle.glob("*.gem.gz")), sep="\t", comment="#")
    check_accounting(tmp_path / "o", run, "stereoseq", raw.groupby("geneID").MIDCounts.sum())
    assert run["config"]["nuclei"]["backend"] == "classical"
    assert run["chip_meta"]["image_source"] == "transcript_density"


def test_bad_reader_option_is_rejected_by_the_cli(tmp_path, capsys):
    bundle = shared_data("xenium_lung_preview")
    rc = main(
        [
            "convert",
            "--input",
            str(bundle),
            "--out",
            str(tmp_path / "c"),
            "--reader-option",
            "min_q=3",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "unknown reader option(s) 'min_q'" in err and "min_qv" in err
    assert not (tmp_path / "c" / "chip.json").exists()


@pytest.mark.ray
def test_cosmx_crop_through_embedded_ray_matches_local(tmp_path):
    """The same bundle through Ray workers gives the in-process result (cells and assignments)."""
    bundle = shared_data("cosmx_lung12_fov2")
    opts = [
        "--reader-option",
        "pixel_size_um=0.18",
        "--reader-option",
        'image_offset_px={"x": 4800, "y_top": 3648}',
        "--set",
        "tiling.tile_size_um=60",
        "--set",
        "cells.method=expansion",
    ]  # the pipeline, not a method
    local = run_cli(bundle, tmp_path / "local", *opts)
    rc = main(
        ["run", "--input", str(bundle), "--out", str(tmp_path / "ray"), "--no-progress", *opts]
    )
    assert rc == 0
    ray_run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert ray_run["n_tiles"] > 1 and ray_run["counts"] == local["counts"]
    a = pd.read_parquet(tmp_path / "local" / "transcripts.parquet").sort_values("input_row")
    b = pd.read_parquet(tmp_path / "ray" / "transcripts.parquet").sort_values("input_row")
    assert np.array_equal(a.cell_id.to_numpy(), b.cell_id.to_numpy())
