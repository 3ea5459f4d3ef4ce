"""The whole pipeline on Ray: tile invariance, local == Ray, exact-once accounting, outputs."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import zarr

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from tests.conftest import make_blob_chip

pytestmark = pytest.mark.ray


def _cfg(*items):
    return load_config(overrides=parse_set(["runtime.progress=false", *items]), use_env=False)


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    return make_blob_chip(
        tmp_path_factory.mktemp("chip") / "chip",
        shape=(300, 360),
        n_nuclei=70,
        n_transcripts=30_000,
    )


@pytest.fixture(scope="module")
def one_tile(chip, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    run_pipeline(chip, str(out), _cfg("tiling.tile_size_um=1000", "tiling.chunk_px=64"), local=True)
    return out


@pytest.fixture(scope="module")
def many_tiles(chip, ray_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("many") / "out"
    summary = run_pipeline(chip, str(out), _cfg("tiling.tile_size_um=24", "tiling.chunk_px=16"))
    assert summary["n_tiles"] > 50
    return out


def _labels(out, name):
    return zarr.open_array(str(out / "labels.zarr" / name), mode="r")[:]


def test_tile_size_does_not_change_the_labels(one_tile, many_tiles):
    # a 1-tile in-process run and a 100+-tile Ray run: identical arrays, IDs included
    for name in ("nuclei", "cells"):
        a, b = _labels(one_tile, name), _labels(many_tiles, name)
        assert a.max() > 50
        np.testing.assert_array_equal(a, b)
    ca = pd.read_parquet(one_tile / "cells.parquet")
    cb = pd.read_parquet(many_tiles / "cells.parquet")
    pd.testing.assert_frame_equal(ca, cb)


def test_every_transcript_counted_exactly_once(chip, many_tiles):
    src = pq.read_table(f"{chip}/transcripts.parquet").to_pandas()
    out = pd.read_parquet(many_tiles / "transcripts.parquet")
    assert len(out) == len(src)
    # without an input transcript_id, the input row index is kept as the ID
    assert sorted(out.transcript_id) == list(range(len(src)))
    back = out.sort_values("transcript_id")
    np.testing.assert_array_equal(back.x.to_numpy(), src.x.to_numpy())
    # each transcript's cell is the label under its pixel
    cells = _labels(many_tiles, "cells")
    nuclei = _labels(many_tiles, "nuclei")
    r = np.floor(back.y.to_numpy() / 0.5).astype(int)
    c = np.floor(back.x.to_numpy() / 0.5).astype(int)
    np.testing.assert_array_equal(back.cell_id.to_numpy(), cells[r, c])
    np.testing.assert_array_equal(back.in_nucleus.to_numpy(), nuclei[r, c] > 0)


def test_outputs_agree_with_each_other(many_tiles):
    cells = pd.read_parquet(many_tiles / "cells.parquet")
    tx = pd.read_parquet(many_tiles / "transcripts.parquet")
    adata = ad.read_h5ad(many_tiles / "cells.h5ad")
    run = json.loads((many_tiles / "run.json").read_text())
    assert list(cells.columns) == [
        "cell_id",
        "x",
        "y",
        "area_um2",
        "nucleus_area_um2",
        "n_transcripts",
        "n_genes",
        "has_nucleus",
    ]
    assert (cells.cell_id > 0).all() and cells.cell_id.is_unique
    assert list(adata.obs_names) == [str(i) for i in cells.cell_id]
    assert int(adata.X.sum()) == int((tx.cell_id > 0).sum()) == run["counts"]["n_assigned"]
    assert adata.X.dtype.kind == "i"
    np.testing.assert_array_equal(
        np.asarray(adata.X.sum(axis=1)).ravel(), cells.n_transcripts.to_numpy()
    )
    per_cell = tx[tx.cell_id > 0].groupby("cell_id").size()
    np.testing.assert_array_equal(
        per_cell.reindex(cells.cell_id, fill_value=0).to_numpy(), cells.n_transcripts.to_numpy()
    )
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["x", "y"]].to_numpy())
    labels = _labels(many_tiles, "cells")
    areas = np.bincount(labels.ravel())[cells.cell_id.to_numpy()] * 0.25
    np.testing.assert_allclose(areas, cells.area_um2.to_numpy())
    assert cells.has_nucleus.all()
    assert run["status"] == "complete" and run["n_tiles"] > 50
    assert set(run["stage_seconds"]) >= {"scan", "nuclei", "cells", "outputs", "total"}
    assert "ray" in run["versions"] and run["config"]["cells"]["method"] == "expansion"
    z = zarr.open_group(str(many_tiles / "labels.zarr"), mode="r")
    assert z.attrs["pixel_size_um"] == 0.5 and z["cells"].dtype == np.uint32
    # cells grow at most distance_um beyond their nucleus and contain it
    nuclei = _labels(many_tiles, "nuclei")
    assert ((nuclei == 0) | (labels == nuclei)).all()


def test_vendor_nuclei_backend(chip, one_tile, tmp_path, ray_module):
    """Vendor nuclei given as nuclei.zarr are used as they are (here: a previous run's nuclei)."""
    import shutil

    from stseg_dist.io.storage import open_zarr_array

    vendor_chip = tmp_path / "vchip"
    shutil.copytree(chip, vendor_chip)
    nuclei = _labels(one_tile, "nuclei")
    arr = open_zarr_array(
        str(vendor_chip / "nuclei.zarr"), "w", shape=nuclei.shape, chunks=(64, 64), dtype="uint32"
    )
    arr[:] = nuclei * 7  # vendor IDs are arbitrary
    out = tmp_path / "out"
    run_pipeline(
        str(vendor_chip),
        str(out),
        _cfg("nuclei.backend=vendor", "tiling.tile_size_um=40", "tiling.chunk_px=16"),
    )
    np.testing.assert_array_equal(_labels(out, "nuclei"), nuclei)


def test_deterministic_across_runs_and_worker_counts(chip, many_tiles, tmp_path, ray_module):
    """A serial Ray run (one tile in flight) repeats the parallel run file for file."""
    out = tmp_path / "serial"
    run_pipeline(
        chip,
        str(out),
        _cfg("tiling.tile_size_um=24", "tiling.chunk_px=16", "runtime.max_in_flight=1"),
    )
    for name in ("cells.parquet", "transcripts.parquet"):
        assert (out / name).read_bytes() == (many_tiles / name).read_bytes()
    for name in ("nuclei", "cells"):
        np.testing.assert_array_equal(_labels(out, name), _labels(many_tiles, name))


def test_background_subtraction_is_tile_invariant(chip, tmp_path):
    """The top-hat's context is in the halo: 1 tile and many tiles give the same nuclei."""
    items = ["nuclei.classical.background_um=12", "cells.method=expansion"]
    runs = []
    for name, tiling in (
        ("one", ["tiling.tile_size_um=1000"]),
        ("many", ["tiling.tile_size_um=24", "tiling.chunk_px=16"]),
    ):
        run_pipeline(chip, str(tmp_path / name), _cfg(*items, *tiling), local=True)
        runs.append(_labels(tmp_path / name, "nuclei"))
    assert runs[0].max() > 50
    np.testing.assert_array_equal(runs[0], runs[1])
