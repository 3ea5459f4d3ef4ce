"""The coverage-contamination plane: frontier interpolation, gaps, regions, the drawing."""

import numpy as np
import pandas as pd
import pytest

from stseg_dist.bench.comparison import parse_spec
from stseg_dist.bench.frontier import (
    draw_frontier,
    frontier_mecr,
    frontier_table,
    place,
    plane_points,
    points_from_rows,
)


def _frontier():
    return pd.DataFrame(
        {
            "dataset": "crop",
            "region": "all",
            "distance_um": [1.0, 5.0, 10.0],
            "assigned": [0.5, 0.8, 0.9],
            "mecr": [0.01, 0.04, 0.06],
        }
    )


def test_frontier_is_read_at_the_runs_own_coverage():
    f = _frontier()
    assert frontier_mecr(f, 0.65) == (pytest.approx(0.025), False)
    # beyond the last point: along the end segment, and flagged
    assert frontier_mecr(f, 0.95) == (pytest.approx(0.07), True)
    placed = place(
        f,
        pd.DataFrame(
            {
                "dataset": "crop",
                "region": "all",
                "label": ["below", "above"],
                "assigned": [0.8, 0.5],
                "mecr": [0.03, 0.02],
            }
        ),
    )
    # a run mixing less than expansion at its own coverage has a negative gap; comparing raw MECR
    # would call "above" (0.02 < 0.03) the better one
    assert placed.gap.tolist() == pytest.approx([-0.01, 0.01])
    table = frontier_table(f, placed)
    assert "| below | 0.800 | 0.0300 | 0.0400 | -0.0100 |" in table


def test_plane_points_score_each_half_and_the_vendor_on_one_ruler(tmp_path):
    chip, out = tmp_path / "chip", tmp_path / "out"
    chip.mkdir()
    out.mkdir()
    genes = np.array(["a", "b"] * 60)
    x = np.repeat(np.arange(60) * 10.0, 2) + 1  # cells of two transcripts, 10 µm apart
    pd.DataFrame(
        {"x": x, "y": 1.0, "gene": genes, "vendor_cell_label": np.repeat(np.arange(1, 61), 2)}
    ).to_parquet(chip / "transcripts.parquet")
    ours = np.where(x < 300, np.repeat(np.arange(1, 61), 2), 0)  # left half assigned, right not
    pd.DataFrame({"input_row": np.arange(120), "cell_id": ours, "gene": genes, "x": x}).to_parquet(
        out / "transcripts.parquet"
    )
    got = plane_points(str(chip), str(out), split_x_um=300.0, vendor_column="vendor_cell_label")
    assert set(got) == {"all", "left", "right"}
    assert got["left"]["assigned"] == 1.0 and got["right"]["assigned"] == 0.0
    assert got["all"]["assigned"] == 0.5 and got["right"]["vendor_assigned"] == 1.0
    pts = points_from_rows([{"dataset": "crop", "method": "expansion", "plane": got}])
    assert (pts.label == "vendor cells").sum() == 3 and len(pts) == 6


def test_draw_frontier_writes_a_png(tmp_path):
    pts = pd.DataFrame(
        {"label": ["ucs", "vendor cells"], "assigned": [0.85, 0.95], "mecr": [0.03, 0.05]}
    )
    data = draw_frontier(_frontier(), pts, "crop", tmp_path / "img" / "f.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "img" / "f.png").read_bytes() == data


def test_a_method_spec_carries_its_settings():
    assert parse_spec("ucs") == ("ucs", [])
    assert parse_spec("ucs:cells.ucs.growth_um=6:cells.ucs.tau=2") == (
        "ucs",
        ["cells.ucs.growth_um=6", "cells.ucs.tau=2"],
    )
