"""``stseg eval`` scores the nuclei stage; ``nuclei.backend=auto`` picks vendor nuclei when present.

Runs are in-process (``--local``) on a small generated chip; the real Xenium crop runs only where
../shared/data is present (``realdata``).
"""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from stseg_dist.cli import main
from stseg_dist.errors import InputError
from stseg_dist.evaluation import evaluate
from stseg_dist.evaluation.evaluate import nucleus_section
from tests.conftest import shared_data

RUN = ["--local", "--no-progress", "--no-spatialdata", "--set", "cells.method=expansion"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A generated chip with vendor nuclei, run by default (auto) and with classical forced."""
    from stseg_dist.synth import synth_chip

    d = tmp_path_factory.mktemp("nuc")
    chip = str(d / "chip")
    synth_chip(chip, 80, 80, seed=2, vendor_nuclei=True)
    assert main(["run", "--chip", chip, "--out", str(d / "auto"), *RUN]) == 0
    assert (
        main(
            ["run", "--chip", chip, "--out", str(d / "classical"), *RUN]
            + ["--set", "nuclei.backend=classical"]
        )
        == 0
    )
    return d, chip


def _run_json(out):
    return json.loads((out / "run.json").read_text())


def test_auto_uses_vendor_nuclei_and_says_why(runs):
    d, _ = runs
    auto, classical = _run_json(d / "auto"), _run_json(d / "classical")
    assert auto["nuclei"]["backend"] == "vendor" and auto["nuclei"]["requested"] == "auto"
    assert "vendor nuclei" in auto["nuclei"]["reason"]
    assert auto["config"]["nuclei"]["backend"] == "vendor"
    choice = {k: classical["nuclei"][k] for k in ("backend", "requested", "reason")}
    assert choice == {
        "backend": "classical",
        "requested": "classical",
        "reason": "nuclei.backend=classical was set",
    }
    assert {"lo", "hi", "threshold", "diameter_px"} <= set(classical["nuclei"])  # prepare's state


def test_auto_without_vendor_nuclei_is_classical(tmp_path):
    from tests.conftest import make_blob_chip

    chip = make_blob_chip(tmp_path / "chip", shape=(120, 120), n_nuclei=10, n_transcripts=2000)
    assert main(["run", "--chip", chip, "--out", str(tmp_path / "o"), *RUN]) == 0
    run = _run_json(tmp_path / "o")
    assert run["nuclei"]["backend"] == "classical" and "no vendor nuclei" in run["nuclei"]["reason"]


def test_eval_scores_the_runs_nuclei_against_the_chips(runs, capsys):
    d, chip = runs
    # vendor nuclei are the generator's true nuclei: a perfect score, read from the run's chip
    m = evaluate(str(d / "auto"))
    assert m["nuclei"]["reference_kind"] == "generated truth"
    assert m["nuclei"]["containment_f1"] == 1.0 and m["nuclei"]["missed"] == 0
    c = evaluate(str(d / "classical"), chip)["nuclei"]
    assert 0.3 < c["containment_f1"] <= 1.0 and c["n_ref"] == m["nuclei"]["n_ref"]
    section = nucleus_section({"nuclei": c})
    assert section["containment F1"] == c["containment_f1"]
    assert main(["eval", "--pred", str(d / "classical"), "--json", str(d / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "nuclei.containment_f1" in printed and "containment F1" in printed
    assert json.loads((d / "m.json").read_text())["nuclei"]["n_pred"] == c["n_pred"]


def test_eval_with_mask_polygons_and_flags(runs, tmp_path):
    d, chip = runs
    truth = zarr.open_array(f"{chip}/truth/nuclei.zarr", mode="r")[:]
    tifffile.imwrite(tmp_path / "mask.tif", truth)
    a = evaluate(str(d / "classical"), nuclei_ref=str(tmp_path / "mask.tif"))["nuclei"]
    b = evaluate(str(d / "classical"), nuclei_ref=chip)["nuclei"]
    assert a["containment_f1"] == b["containment_f1"] and a["reference_kind"] == "label mask"
    # another run's labels.zarr (its 'nuclei' array; the auto run used the true nuclei)
    z = evaluate(str(d / "classical"), nuclei_ref=str(d / "auto" / "labels.zarr"))["nuclei"]
    assert z["containment_f1"] == a["containment_f1"] and z["n_ref"] == a["n_ref"]
    # the same nuclei as µm squares in a vertex table: scored the same way, on the run's grid
    ps = json.loads(open(f"{chip}/chip.json").read())["pixel_size_um"]
    rows = []
    for lab in np.unique(truth)[1:]:
        r, c = np.nonzero(truth == lab)
        x0, x1, y0, y1 = c.min() * ps, (c.max() + 1) * ps, r.min() * ps, (r.max() + 1) * ps
        rows += [(lab, x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    pd.DataFrame(rows, columns=["cell_id", "vertex_x", "vertex_y"]).to_parquet(
        tmp_path / "p.parquet"
    )
    p = evaluate(str(d / "classical"), nuclei_ref=str(tmp_path / "p.parquet"))["nuclei"]
    assert p["reference_kind"] == "polygons" and p["n_ref"] == a["n_ref"]
    # the same squares as GeoParquet (WKB geometry): the same scores
    import shapely

    v = pd.read_parquet(tmp_path / "p.parquet")
    geoms = [
        shapely.Polygon(g[["vertex_x", "vertex_y"]].to_numpy()) for _, g in v.groupby("cell_id")
    ]
    pd.DataFrame({"geometry": shapely.to_wkb(geoms)}).to_parquet(tmp_path / "g.parquet")
    g = evaluate(str(d / "classical"), nuclei_ref=str(tmp_path / "g.parquet"))["nuclei"]
    assert {k: g[k] for k in p if k != "reference"} == {k: p[k] for k in p if k != "reference"}
    # per-transcript flags joined on input_row: the run's own flags agree perfectly
    tx = pd.read_parquet(d / "classical" / "transcripts.parquet", columns=["in_nucleus"])
    tx.rename(columns={"in_nucleus": "flag"}).to_parquet(tmp_path / "f.parquet")
    f = evaluate(str(d / "classical"), nuclei_ref=f"{tmp_path / 'f.parquet'}#flag")["nuclei"]
    assert f["transcript_precision"] == 1.0 and f["transcript_recall"] == 1.0
    tx.iloc[:-1].rename(columns={"in_nucleus": "flag"}).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(InputError, match="have no nucleus flag"):
        evaluate(str(d / "classical"), nuclei_ref=f"{tmp_path / 'short.parquet'}#flag")
    with pytest.raises(InputError, match="no column 'nope'"):
        evaluate(str(d / "classical"), nuclei_ref=f"{tmp_path / 'f.parquet'}#nope")


def test_reference_on_another_grid_or_frame_is_refused_and_nothing_written(runs, tmp_path, capsys):
    d, _ = runs
    shape = zarr.open_group(str(d / "classical" / "labels.zarr"), mode="r")["nuclei"].shape
    tifffile.imwrite(tmp_path / "small.tif", np.ones((10, 12), np.uint16))
    out = tmp_path / "m.json"
    rc = main(
        [
            "eval",
            "--pred",
            str(d / "classical"),
            "--nuclei-ref",
            str(tmp_path / "small.tif"),
            "--json",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "small.tif is 10x12 px" in err and f"{shape[0]}x{shape[1]} px" in err
    assert "labels.zarr" in err
    # polygons in pixels where the run is in µm (x 1000x too far): the frame is named
    pd.DataFrame(
        {"cell_id": 1, "vertex_x": [5000.0, 5100, 5100], "vertex_y": [5000.0, 5000, 5100]}
    ).to_parquet(tmp_path / "far.parquet")
    rc = main(
        ["eval", "--pred", str(d / "classical"), "--nuclei-ref", str(tmp_path / "far.parquet")]
        + ["--json", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "far.parquet is not in the run's coordinate frame" in err and "x 5066.7" in err
    assert "x 0.0..80.0" in err
    # a chip on another grid
    from stseg_dist.synth import synth_chip

    other = str(tmp_path / "other")
    synth_chip(other, 60, 80, seed=1, vendor_nuclei=True)
    with pytest.raises(InputError, match=r"not on the run's grid: reference .*other/chip.json"):
        evaluate(str(d / "classical"), nuclei_ref=other)


@pytest.mark.realdata
def test_xenium_crop_defaults_to_vendor_nuclei_and_eval_scores_classical(tmp_path, capsys):
    bundle = str(shared_data("xenium_breast_top"))
    assert main(["run", "--input", bundle, "--out", str(tmp_path / "auto"), *RUN]) == 0
    auto = _run_json(tmp_path / "auto")
    assert auto["nuclei"]["backend"] == "vendor" and auto["counts"]["n_cells"] == 585
    assert "585 nuclei: vendor nucleus polygons" in auto["nuclei"]["reason"]
    args = ["--set", "nuclei.backend=classical"]
    assert main(["run", "--input", bundle, "--out", str(tmp_path / "cl"), *RUN, *args]) == 0
    cl = _run_json(tmp_path / "cl")
    assert cl["nuclei"]["backend"] == "classical"
    assert cl["counts"]["n_cells"] != auto["counts"]["n_cells"]  # the stain, not the polygons
    capsys.readouterr()
    assert main(["eval", "--pred", str(tmp_path / "cl")]) == 0
    printed = capsys.readouterr().out
    m = evaluate(str(tmp_path / "cl"))["nuclei"]
    assert m["reference_kind"] == "chip nuclei" and m["n_ref"] == 585
    assert 0.3 < m["containment_f1"] < 1.0  # scored against the 585 polygons, not itself
    assert 0.7 < m["transcript_precision"] < 1.0 and m["flags_reference"].startswith("overlaps")
    assert "transcripts in a nucleus: precision" in printed


def test_report_shows_the_nucleus_figures(runs):
    from stseg_dist.report import write_report

    d, chip = runs
    text = open(write_report(str(d / "classical"), ref=chip), encoding="utf-8").read()
    assert "<h2>Nuclei</h2>" in text and "containment F1" in text and "generated truth" in text
