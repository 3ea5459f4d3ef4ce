"""OUT/spatialdata.zarr: spatialdata.read_zarr opens it, and it holds the run as written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from tests.conftest import REPO

sd = pytest.importorskip("spatialdata")


@pytest.fixture(scope="module")
def exported(small_run):
    chip, run = small_run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stseg_dist",
            "export",
            "--to",
            "spatialdata",
            str(run),
            "--chip",
            str(chip),
            "--overwrite",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(run / "spatialdata.zarr")
    return run, sd.read_zarr(run / "spatialdata.zarr")


def _full(element):
    """Full-resolution array of a raster element (written with a pyramid)."""
    if hasattr(element, "data"):
        return np.asarray(element.data)
    return np.asarray(next(iter(element["scale0"].values())).data)


def test_elements_hold_the_run(exported, small_run):
    run, sdata = exported
    chip, _ = small_run
    assert set(sdata.labels) == {"cell_labels", "nucleus_labels"}
    assert set(sdata.shapes) == {"cell_boundaries", "nucleus_boundaries"}
    assert set(sdata.points) == {"transcripts"} and set(sdata.images) == {"image"}
    for name, key in (("cell_labels", "cells"), ("nucleus_labels", "nuclei")):
        np.testing.assert_array_equal(
            _full(sdata[name]), zarr.open_array(str(run / "labels.zarr" / key))[:]
        )
    np.testing.assert_array_equal(
        _full(sdata["image"])[0], zarr.open_array(str(chip / "image.zarr"))[:]
    )

    cells = pd.read_parquet(run / "cells.parquet")
    table = sdata["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "cell_boundaries" and attrs["instance_key"] == "cell_id"
    assert table.obs["cell_id"].tolist() == cells.cell_id.tolist()  # rows match cells.parquet
    assert sorted(sdata["cell_boundaries"].index) == sorted(
        cells.cell_id
    )  # every row annotates a shape

    tx = sdata["transcripts"].compute().sort_values("input_row")
    src = pd.read_parquet(run / "transcripts.parquet").sort_values("input_row")
    assert len(tx) == len(src)
    np.testing.assert_array_equal(tx.cell_id.to_numpy(), src.cell_id.to_numpy())
    np.testing.assert_allclose(tx[["x", "y"]].to_numpy(), src[["x", "y"]].to_numpy())
    assert tx.gene.astype(str).tolist() == src.gene.astype(str).tolist()


def test_everything_is_in_um(exported):
    """Pixel corner (r, c) of a raster maps to the µm point the chip says; outlines hold their
    transcripts.
    """
    import shapely
    from spatialdata.transformations import get_transformation

    from tests.outputs.conftest import ORIGIN_UM

    _, sdata = exported
    ps, (x0, y0) = 0.5, ORIGIN_UM
    for name in ("cell_labels", "nucleus_labels", "image"):
        t = get_transformation(sdata[name], to_coordinate_system="global")
        m = t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        got = m @ np.array(
            [[0.0, 10.0], [0.0, 4.0], [1.0, 1.0]]
        )  # columns: (c, r) = (0, 0), (10, 4)
        np.testing.assert_allclose(got[:2].T, [[x0, y0], [x0 + 10 * ps, y0 + 4 * ps]])
    tx = sdata["transcripts"].compute()
    shapes = sdata["cell_boundaries"]
    for cid in tx.cell_id[tx.cell_id > 0].unique()[:10]:
        pts = tx[tx.cell_id == cid]
        assert shapely.covers(shapes.geometry.loc[cid], shapely.points(pts.x, pts.y)).all()


def test_standard_metadata_and_a_labels_table(exported):
    """Channel names in OME omero metadata (spatialdata 0.7.3 refuses an image without them),
    sopa's element keys in the root attrs, and a second table over the cell labels.
    """
    run, sdata = exported
    omero = zarr.open_group(str(run / "spatialdata.zarr" / "images" / "image")).attrs["ome"][
        "omero"
    ]
    assert [c["label"] for c in omero["channels"]] == ["DAPI"]
    assert {"color", "window", "active"} <= set(omero["channels"][0])
    image = sdata["image"]
    image = image if hasattr(image, "c") else next(iter(image["scale0"].values()))
    assert list(image.c.values) == ["DAPI"]
    assert sdata.attrs["boundaries_shapes"] == "cell_boundaries"
    assert sdata.attrs["cell_segmentation_image"] == "image"
    assert sdata.attrs["transcripts_dataframe"] == "transcripts"
    table, labels_table = sdata["table"], sdata["cell_labels_table"]
    assert labels_table.uns["spatialdata_attrs"]["region"] == "cell_labels"
    assert table.obs["cell_id"].tolist() == labels_table.obs["cell_id"].tolist()
    label_ids = set(np.unique(_full(sdata["cell_labels"]))) - {0}
    assert set(labels_table.obs["cell_id"]) == label_ids  # every row annotates a label value


def test_pyramid_down_to_a_small_top_level(small_run, tmp_path, monkeypatch):
    """A chip larger than PYRAMID_TOP_PX gets halvings until the top level fits (spatialdata
    0.7.0 cannot write pyramids and keeps one level).
    """
    from importlib.metadata import version

    from stseg_dist.export import open_run
    from stseg_dist.export import spatialdata as S

    if version("spatialdata") == "0.7.0":
        pytest.skip("spatialdata 0.7.0 writes no pyramid (scverse/spatialdata#1090)")
    chip, run = small_run
    monkeypatch.setattr(S, "PYRAMID_TOP_PX", 64)
    S.write_spatialdata(open_run(str(run), str(chip)), tmp_path / "sd.zarr")
    sdata = sd.read_zarr(tmp_path / "sd.zarr")
    for name in ("image", "cell_labels"):
        levels = [next(iter(sdata[name][k].values())).shape[-1] for k in sdata[name].children]
        assert sorted(levels, reverse=True) == [260, 130, 65, 32]  # 260 px wide: 3 halvings
    assert list(sdata["image"]["scale0"]["image"].c.values) == ["DAPI"]


def test_the_run_writes_the_store_as_a_stage(exported, small_run, tmp_path):
    """``run_pipeline(spatialdata=True)`` writes OUT/spatialdata.zarr inside the run's clock (a
    stage of its own in run.json), holding exactly what ``stseg export`` writes from the run.
    """
    from stseg_dist.driver import run_pipeline
    from tests.outputs.conftest import small_tiles_config

    chip, _ = small_run
    run, exported_sdata = exported
    out = tmp_path / "run"
    summary = run_pipeline(str(chip), str(out), small_tiles_config(), local=True, spatialdata=True)
    assert summary["stage_seconds"]["spatialdata"] > 0
    assert {"boundaries", "outputs.tables", "outputs.anndata"} <= set(summary["stage_seconds"])
    assert not any(p.name.startswith(".") for p in out.iterdir())  # nothing left half-written
    staged = sd.read_zarr(out / "spatialdata.zarr")
    assert_same_store(staged, exported_sdata)
    # the run's tasks wrote the points one partition per tile with transcripts
    row_groups = pq.ParquetFile(out / "transcripts.parquet").metadata
    with_rows = sum(row_groups.row_group(i).num_rows > 0 for i in range(row_groups.num_row_groups))
    assert staged["transcripts"].npartitions == with_rows > 1
    assert_same_rasters(out / "spatialdata.zarr", run / "spatialdata.zarr")


def test_the_runs_pyramids_are_the_single_writers(small_run, tmp_path, monkeypatch):
    """With pyramids (a small top level, so three halvings of 260 px, odd sizes included), the
    run's rasters (written apart from the rest of the store, then moved in) are those of
    ``write_spatialdata`` alone, level for level.
    """
    from importlib.metadata import version

    from stseg_dist.driver import run_pipeline
    from stseg_dist.export import open_run
    from stseg_dist.export import spatialdata as S
    from tests.outputs.conftest import small_tiles_config

    if version("spatialdata") == "0.7.0":
        pytest.skip("spatialdata 0.7.0 writes no pyramid (scverse/spatialdata#1090)")
    chip, _ = small_run
    monkeypatch.setattr(S, "PYRAMID_TOP_PX", 64)
    out = tmp_path / "run"
    run_pipeline(str(chip), str(out), small_tiles_config(), local=True, spatialdata=True)
    S.write_spatialdata(open_run(str(out), str(chip)), tmp_path / "one.zarr")
    assert_same_rasters(out / "spatialdata.zarr", tmp_path / "one.zarr", levels=4)


def test_one_block_or_many_write_the_same_store(small_run, tmp_path, monkeypatch):
    """The store's rasters written in one block per element or in many small blocks over
    several phases are the same arrays; level 0 of the labels is the run's own chunk files.
    """
    from stseg_dist.export import open_run
    from stseg_dist.export import pyramid as P
    from stseg_dist.export import spatialdata as S

    chip, run = small_run
    files = open_run(str(run), str(chip))
    monkeypatch.setattr(S, "PYRAMID_TOP_PX", 16)  # 260 px: four halvings
    monkeypatch.setattr(P, "BLOCK_MAX_PX", 10**6)
    S.write_rasters(files, tmp_path / "one.zarr")
    monkeypatch.setattr(P, "BLOCK_MAX_PX", 1)
    zarr.open_group(str(tmp_path / "probe.zarr"), mode="w")
    phases = S.raster_phases(files, tmp_path / "probe.zarr")
    assert len(phases) > 1 and len(phases[0]) > 3
    S.write_rasters(files, tmp_path / "many.zarr")
    one, many = tmp_path / "one.zarr", tmp_path / "many.zarr"
    names = sorted(p.parent.relative_to(one) for p in one.rglob("zarr.json"))
    assert names == sorted(p.parent.relative_to(many) for p in many.rglob("zarr.json"))
    assert sum(n.name == "s4" for n in names) == 3  # five levels of each element
    for rel in names:
        assert (many / rel / "zarr.json").read_bytes() == (one / rel / "zarr.json").read_bytes()
        if rel.name.startswith("s"):
            np.testing.assert_array_equal(
                zarr.open_array(str(many / rel))[:], zarr.open_array(str(one / rel))[:]
            )
    src = run / "labels.zarr" / "cells"
    dst = tmp_path / "many.zarr" / "labels" / "cell_labels" / "s0"
    chunks = sorted(
        p.relative_to(src) for p in src.rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    assert chunks and chunks == sorted(
        p.relative_to(dst) for p in dst.rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    assert all((src / c).read_bytes() == (dst / c).read_bytes() for c in chunks)
    np.testing.assert_array_equal(zarr.open_array(str(dst))[:], zarr.open_array(str(src))[:])


def test_the_rasters_are_what_spatialdata_writes(small_run, tmp_path, monkeypatch):
    """The block-wise rasters equal spatialdata's own writer on the same elements (its dask
    pyramids, ``write_labels`` / ``write_image``): every array's ``zarr.json`` byte for byte,
    every label level, and every image level whose level above is even-sized (260 x 200 px
    here: 130 x 100, 65 x 50, then 32 x 25 from an odd 65, where spatialdata's first-pixel
    shift is fixed).
    """
    from stseg_dist.export import open_run
    from stseg_dist.export import spatialdata as S

    chip, run = small_run
    files = open_run(str(run), str(chip))
    monkeypatch.setattr(S, "PYRAMID_TOP_PX", 64)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    S.write_rasters(files, ours)
    zarr.open_group(str(theirs), mode="w")
    S._write_rasters(S.build(files, others=False), theirs)
    arrays = sorted(p.parent.relative_to(theirs) for p in theirs.rglob("s*/zarr.json"))
    assert len(arrays) == 12
    for rel in arrays:
        assert (ours / rel / "zarr.json").read_bytes() == (theirs / rel / "zarr.json").read_bytes()
        got, want = zarr.open_array(str(ours / rel))[:], zarr.open_array(str(theirs / rel))[:]
        if rel.parts[0] == "labels" or rel.name != "s3":
            np.testing.assert_array_equal(got, want)
        else:
            assert got.shape == want.shape and not np.array_equal(got, want)
    for rel in ("labels/zarr.json", "labels/cell_labels/zarr.json"):
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes()


def test_the_labels_table_is_the_table_spatialdata_writes(small_run, tmp_path):
    """The labels table, copied from the first table with its region changed, is file for file
    what spatialdata writes for it.
    """
    from spatialdata import SpatialData

    from stseg_dist.export import open_run
    from stseg_dist.export import spatialdata as S

    chip, run = small_run
    others = S.build(open_run(str(run), str(chip)), rasters=False)
    S._write_others(others, tmp_path / "ours.zarr")
    with S.warnings_quiet():
        SpatialData(tables=dict(others.tables)).write(tmp_path / "theirs.zarr")
    ours, theirs = tmp_path / "ours.zarr" / "tables", tmp_path / "theirs.zarr" / "tables"
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert any(f.parts[0] == "cell_labels_table" for f in files)
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    for f in files:
        assert (ours / f).read_bytes() == (theirs / f).read_bytes(), f


def assert_same_rasters(ours, theirs, levels: int | None = None) -> None:
    """Two stores' images and labels are equal level for level, with byte-identical zarr.json."""
    a, b = sd.read_zarr(ours), sd.read_zarr(theirs)
    assert set(a.images) | set(a.labels) == set(b.images) | set(b.labels)
    for name in (*a.images, *a.labels):
        got, want = _pyramid(a[name]), _pyramid(b[name])
        assert len(got) == len(want) == (levels or len(want))
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)

    def metadata(store):
        return sorted(
            p.relative_to(store)
            for k in ("images", "labels")
            for p in (store / k).rglob("zarr.json")
        )

    assert metadata(ours) == metadata(theirs)
    for rel in metadata(theirs):
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes(), rel


def _pyramid(element) -> list[np.ndarray]:
    """Every resolution level of a raster element, finest first."""
    if hasattr(element, "data"):
        return [np.asarray(element.data)]
    keys = sorted(element.children, key=lambda k: int(k.removeprefix("scale")))
    return [np.asarray(next(iter(element[k].values())).data) for k in keys]


def assert_same_store(a, b) -> None:
    """Two SpatialData objects hold the same elements, arrays, shapes, points and table."""
    import shapely

    for kind in ("images", "labels", "shapes", "points", "tables"):
        assert set(getattr(a, kind)) == set(getattr(b, kind)), kind
    for name in (*a.images, *a.labels):
        np.testing.assert_array_equal(_full(a[name]), _full(b[name]))
    for name in a.shapes:
        assert a[name].index.tolist() == b[name].index.tolist()
        assert (
            shapely.to_wkb(a[name].geometry.values) == shapely.to_wkb(b[name].geometry.values)
        ).all()
    for name in a.points:
        pa_, pb = a[name].compute(), b[name].compute()
        assert set(pa_.columns) == set(pb.columns)  # spatialdata orders the rest by a set
        pd.testing.assert_frame_equal(pa_, pb[pa_.columns])
    for name in a.tables:
        ta, tb = a[name], b[name]
        pd.testing.assert_frame_equal(ta.obs, tb.obs)
        assert (ta.X != tb.X).nnz == 0 and list(ta.var_names) == list(tb.var_names)
        assert ta.uns["spatialdata_attrs"] == tb.uns["spatialdata_attrs"]


def test_a_run_failing_after_the_cells_leaves_no_store_being_written(
    small_run, tmp_path, monkeypatch
):
    """The store's rasters and points start after the cell pass; a run that fails later waits
    for them and removes what they wrote (no thread left writing into the run's folders).
    """
    import threading

    from stseg_dist import driver
    from tests.outputs.conftest import small_tiles_config

    def fail(*_args, **_kwargs):
        raise RuntimeError("boom after the cell pass")

    monkeypatch.setattr(driver, "_write_outputs", fail)
    chip, _ = small_run
    with pytest.raises(RuntimeError, match="boom"):
        driver.run_pipeline(
            str(chip), str(tmp_path / "run"), small_tiles_config(), local=True, spatialdata=True
        )
    names = {t.name for t in threading.enumerate()}
    assert not names & {"stseg-store-rasters", "stseg-store-points"}
    assert not list(tmp_path.rglob(".spatialdata-rasters"))
    assert not list(tmp_path.rglob(".spatialdata-points"))
    assert not (tmp_path / "run" / "spatialdata.zarr").exists()


def test_a_run_failing_in_the_cell_pass_writes_no_raster_block(small_run, tmp_path, monkeypatch):
    """The store's raster metadata starts with the cell pass; a run failing in it releases
    the waiting writer without its blocks, and nothing is left behind.
    """
    import threading

    from stseg_dist import driver
    from tests.outputs.conftest import small_tiles_config

    record = driver._record

    def fail_cells(run, outs, name, *args, **kwargs):
        if name == "cells":
            raise RuntimeError("boom in the cell pass")
        return record(run, outs, name, *args, **kwargs)

    monkeypatch.setattr(driver, "_record", fail_cells)
    monkeypatch.setattr(driver.stages, "raster_block", None)  # a block would fail loudly
    chip, _ = small_run
    with pytest.raises(RuntimeError, match="boom in the cell pass"):
        driver.run_pipeline(
            str(chip), str(tmp_path / "run"), small_tiles_config(), local=True, spatialdata=True
        )
    assert not any(t.name == "stseg-store-rasters" for t in threading.enumerate())
    assert not list(tmp_path.rglob(".spatialdata-rasters"))
