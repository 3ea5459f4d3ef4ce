"""The benchmark harness runs end to end on a tiny chip and reports every figure
(no time asserted).
"""

import json
import math

import pytest

pytest.importorskip("stseg_dist.driver")

from stseg_dist.bench import main, run_bench  # noqa: E402


@pytest.mark.slow
def test_run_bench_tiny(tmp_path):
    lines = []
    rows = run_bench([80.0], [1], tile_um=64, workdir=str(tmp_path), echo=lines.append)
    assert [r["mode"] for r in rows] == ["single_process", "ray"]
    single, ray_row = rows
    assert single["n_transcripts"] == ray_row["n_transcripts"] > 0
    assert single["n_cells"] == ray_row["n_cells"] > 0
    assert ray_row["ray_over_single_process"] > 0
    assert ray_row["worker_peak_rss_mb"] > 0 and ray_row["driver_peak_rss_mb"] > 0
    assert {"nuclei", "cells", "total"} <= set(ray_row["stage_seconds"])
    assert len(lines) == 3 and "transcripts/s" in lines[-1]
    for row in rows:  # the outputs split, each part timed inside the run (report: after it)
        assert set(row["outputs_seconds"]) == {
            "boundaries",
            "tables",
            "anndata",
            "publish",
            "spatialdata",
            "report",
        }
        assert all(v >= 0 for v in row["outputs_seconds"].values())
        assert 0 < row["outputs_share"] < 1
        assert row["transcripts_per_s"] > 0
        assert "outputs: boundaries=" in lines[-1] and "peak RSS per process" in lines[-1]
    # peak RSS per process: the driver alone in-process; with Ray, its workers and Ray's own
    # processes (the driver's descendants: not another Ray cluster on the same machine)
    single_kinds = [p["kind"] for p in single["processes"]]
    assert single_kinds.count("driver") == 1 and "worker" not in single_kinds
    kinds = [p["kind"] for p in ray_row["processes"]]
    assert kinds.count("driver") == 1 and kinds.count("worker") >= 1 and "ray" in kinds
    assert any(p["name"].startswith("ray::") for p in ray_row["processes"] if p["kind"] == "worker")
    assert ray_row["all_processes_peak_rss_mb"] >= ray_row["worker_peak_rss_mb"] > 0
    assert ray_row["worker_peak_rss_mb"] == max(
        p["peak_rss_mb"] for p in ray_row["processes"] if p["kind"] == "worker"
    )


def test_bench_cli_rejects_bad_args(capsys):
    with pytest.raises(SystemExit):
        main(["--sizes-um", "big"])
    assert "invalid float" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_main_writes_json(tmp_path):
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "--",
                "--sizes-um",
                "60",
                "--workers",
                "1",
                "--no-local",
                "--tile-um",
                "64",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["mode"] == "ray" and "ray_over_single_process" not in rows[0]


@pytest.mark.slow
def test_method_comparison_on_generated_and_real_chips(tmp_path, capsys):
    """``stseg bench --methods``: a row per method and chip, scored against truth or vendor cells;
    a method that cannot run on a chip (no membrane stain on CosMx) is reported, not fatal.
    """
    from tests.conftest import shared_data

    shared_data("cosmx_lung12_fov2")
    out = tmp_path / "cmp.json"
    assert (
        main(
            [
                "--",
                "--methods",
                "expansion",
                "membrane",
                "--size-um",
                "60",
                "--tile-um",
                "40",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    printed = capsys.readouterr().out
    by = {(r["dataset"], r["method"]): r for r in rows}
    assert set(by) >= {
        ("synthetic0", "expansion"),
        ("synthetic0", "membrane"),
        ("cosmx_lung12_fov2", "expansion"),
    }
    assert ("cosmx_lung12_fov2", "membrane") not in by and "not applicable" in printed
    for r in (
        rows
    ):  # F1 wherever there are reference cells (the Xenium preview has per-transcript ones only)
        assert r["transcripts_per_s"] > 0 and math.isnan(r["cell_f1_iou50"]) == (
            r["n_ref_cells"] <= 0
        ), r
    assert "merscope_mousebrain" in {r["dataset"] for r in rows}
    # the generated chip has truth and a membrane stain: both methods find its cells (13 of 13 when
    # written, F1 1.0), and the membrane puts more transcripts in their true cell (0.90 vs 0.84)
    expansion, membrane = by[("synthetic0", "expansion")], by[("synthetic0", "membrane")]
    assert expansion["cell_f1_iou50"] >= 0.9 and membrane["cell_f1_iou50"] >= 0.9
    assert membrane["right_cell_fraction"] >= expansion["right_cell_fraction"] + 0.03
    # the CosMx crop against the vendor's cells (F1 0.60, per-transcript ARI 0.47 when written);
    # unrelated labels would score near 0
    cosmx = by[("cosmx_lung12_fov2", "expansion")]
    assert cosmx["cell_f1_iou50"] > 0.45 and cosmx["vendor_ari"] > 0.35
