"""Vendor nuclei rebuilt from per-transcript nucleus flags
(Xenium overlaps_nucleus, CosMx CellComp).
"""

import json

import numpy as np
import pandas as pd
import pytest
import zarr

from stseg_dist.errors import InputError
from stseg_dist.io.bundles import convert_bundle
from stseg_dist.io.flag_nuclei import FlagNuclei
from tests.conftest import shared_data


def test_hulls_grown_labelled_and_thresholded():
    f = FlagNuclei(min_transcripts=3, grow_um=0.5)
    f.add(
        np.array(["b", "b", "b", "a", "a", "a", "a", "c", "c", "UNASSIGNED", "b"]),
        np.array([10, 12, 10, 0, 4, 4, 0, 20, 21, 30, 30.0]),
        np.array([10, 10, 12, 0, 0, 4, 4, 20, 21, 30, 30.0]),
        np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool),  # b's last one is not flagged
    )
    polys = list(f)
    assert [p[0] for p in polys] == [1, 2]  # a, b; c has 2 flagged transcripts, UNASSIGNED none
    import shapely

    a = shapely.Polygon(np.c_[polys[0][1], polys[0][2]])
    assert a.contains(shapely.Point(0, 0)) and a.contains(shapely.Point(4.3, 4.3))
    assert 16 < a.area < (4 + 1) ** 2  # the 4x4 square grown by 0.5 µm
    b = shapely.Polygon(np.c_[polys[1][1], polys[1][2]])
    assert not b.contains(shapely.Point(30, 30))
    f.reset()
    assert len(f) == 0


def _flag_bundle(d, flag_col="overlaps_nucleus"):
    """A Xenium-layout bundle with no image, no polygons, no masks: only per-transcript flags."""
    rng = np.random.default_rng(0)
    rows = []
    for k, (cx, cy) in enumerate([(10, 10), (30, 12), (20, 30)]):
        n = 60
        x, y = cx + rng.normal(0, 2.5, n), cy + rng.normal(0, 2.5, n)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < 2.0**2
        rows.append(
            pd.DataFrame(
                {
                    "feature_name": "G1",
                    "x_location": x,
                    "y_location": y,
                    "qv": 30.0,
                    "cell_id": f"cell{k}",
                    flag_col: inside.astype(np.uint8),
                    "transcript_id": np.arange(n) + 1000 * k,
                }
            )
        )
    df = pd.concat(rows, ignore_index=True)
    d.mkdir()
    df.to_parquet(d / "transcripts.parquet")
    return df


def test_xenium_bundle_with_flags_only_gets_vendor_nuclei(tmp_path):
    df = _flag_bundle(tmp_path / "b")
    rep = convert_bundle(str(tmp_path / "b"), str(tmp_path / "c"), "xenium")
    assert rep["n_vendor_nuclei"] == 3 and rep["vendor_segmentation"] == "transcript_flags"
    meta = json.loads((tmp_path / "c" / "chip.json").read_text())
    nuc = zarr.open_array(str(tmp_path / "c" / "nuclei.zarr"), mode="r")[:]
    ps, (x0, y0) = meta["pixel_size_um"], meta["origin_um"]
    flagged = df[df.overlaps_nucleus == 1]
    r = np.floor((flagged.y_location - y0) / ps).astype(int)
    c = np.floor((flagged.x_location - x0) / ps).astype(int)
    lab = nuc[r, c]
    assert (lab > 0).all()  # every flagged transcript lies in its rebuilt nucleus...
    per_cell = pd.Series(lab).groupby(flagged.cell_id.to_numpy()).nunique()
    assert (per_cell == 1).all() and len(set(lab)) == 3  # ...one nucleus per vendor cell
    # the default backend then uses them
    from stseg_dist.io.chip import open_chip
    from stseg_dist.nuclei import choose_backend

    name, why = choose_backend("auto", open_chip(str(tmp_path / "c")))
    assert name == "vendor" and "3 nuclei: rebuilt from the vendor's per-transcript" in why
    # turned off: no nuclei, so the stain (here: density) is segmented
    rep = convert_bundle(
        str(tmp_path / "b"), str(tmp_path / "n"), "xenium", options={"vendor_nuclei": False}
    )
    assert rep["n_vendor_nuclei"] == 0 and not (tmp_path / "n" / "nuclei.zarr").exists()
    with pytest.raises(InputError, match="vendor_nuclei must be"):
        convert_bundle(
            str(tmp_path / "b"), str(tmp_path / "x"), "xenium", options={"vendor_nuclei": "yes"}
        )


def test_flags_too_few_per_cell_leave_an_empty_nuclei_array_and_auto_is_classical(tmp_path):
    _flag_bundle(tmp_path / "b")
    rep = convert_bundle(
        str(tmp_path / "b"),
        str(tmp_path / "c"),
        "xenium",
        options={"flag_nuclei_min_transcripts": 10_000},
    )
    assert rep["n_vendor_nuclei"] == 0
    from stseg_dist.io.chip import open_chip
    from stseg_dist.nuclei import choose_backend

    assert choose_backend("auto", open_chip(str(tmp_path / "c")))[0] == "classical"


@pytest.mark.realdata
def test_xenium_crop_flags_rebuild_its_polygons(tmp_path):
    from stseg_dist.evaluation.nuclei import nucleus_metrics

    bundle = str(shared_data("xenium_breast_top"))
    rep = convert_bundle(bundle, str(tmp_path / "f"), "xenium", options={"vendor_nuclei": "flags"})
    convert_bundle(bundle, str(tmp_path / "p"), "xenium")
    assert rep["n_vendor_nuclei"] == 585
    a = zarr.open_array(str(tmp_path / "f" / "nuclei.zarr"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "p" / "nuclei.zarr"), mode="r")[:]
    # the bundle's polygons were made the same way (SOURCE.md): the same nuclei, to a few pixels
    assert ((a > 0) == (b > 0)).mean() > 0.999
    assert nucleus_metrics(a, b)["iou50_f1"] == 1.0


@pytest.mark.realdata
def test_cosmx_crop_nuclei_from_cellcomp(tmp_path):
    bundle = str(shared_data("cosmx_lung12_fov2"))
    opts = {"pixel_size_um": 0.18, "image_offset_px": {"x": 4800, "y_top": 3648}}
    rep = convert_bundle(bundle, str(tmp_path / "c"), "cosmx", options=opts)
    assert rep["vendor_segmentation"] == "transcript_flags" and 50 <= rep["n_vendor_nuclei"] <= 67
    nuc = zarr.open_array(str(tmp_path / "c" / "nuclei.zarr"), mode="r")[:]
    cells = zarr.open_array(str(tmp_path / "c" / "vendor_cells.zarr"), mode="r")[:]
    assert (cells[nuc > 0] > 0).mean() > 0.99  # nuclei lie in the vendor's cells
