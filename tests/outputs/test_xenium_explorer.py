"""`stseg export --to xenium-explorer`: the Explorer's files, their structure and their content."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
import zarr
from zarr.storage import ZipStore

from stseg_dist.boundaries import read_boundaries
from stseg_dist.cli import main
from tests.outputs.conftest import ORIGIN_UM


@pytest.fixture(scope="module")
def explorer(small_run, tmp_path_factory):
    chip, run = small_run
    out = tmp_path_factory.mktemp("xe") / "explorer"
    assert (
        main(
            ["export", "--to", "xenium-explorer", str(run), "--chip", str(chip), "--out", str(out)]
        )
        == 0
    )
    return run, out


def _group(path):
    return zarr.open_group(ZipStore(path, mode="r"), mode="r", zarr_format=2)


def test_files_and_manifest(explorer):
    run, out = explorer
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "experiment.xenium",
            "morphology.ome.tif",
            "cells.zarr.zip",
            "cell_feature_matrix.zarr.zip",
            "analysis.zarr.zip",
            "transcripts.zarr.zip",
        ]
    )  # the pyramid scratch is gone
    manifest = json.loads((out / "experiment.xenium").read_text())
    cells = pd.read_parquet(run / "cells.parquet")
    assert manifest["num_cells"] == len(cells) and manifest["pixel_size"] == 0.5
    # summary fields as Xenium defines them: median per cell, and per 100 µm² of the region
    assert manifest["transcripts_per_cell"] == round(cells.n_transcripts.median()) > 0
    n_tx = json.loads((run / "run.json").read_text())["counts"]["n_transcripts"]
    assert manifest["transcripts_per_100um"] == pytest.approx(n_tx / (100 * 130) * 100, abs=0.01)
    n_genes = ad.read_h5ad(run / "cells.h5ad").n_vars
    assert manifest["panel_num_targets_predesigned"] == n_genes
    for key, name in manifest["xenium_explorer_files"].items():
        assert (out / name).exists(), key
    assert (out / manifest["images"]["morphology_filepath"]).exists()


def test_cell_outlines(explorer):
    run, out = explorer
    cells = pd.read_parquet(run / "cells.parquet")
    g = _group(out / "cells.zarr.zip")
    n = len(cells)
    assert g.attrs["number_cells"] == n and g.attrs["polygon_set_names"] == ["nucleus", "cell"]
    verts = g["polygon_vertices"][:]
    assert verts.shape == (2, n, 26) and verts.dtype == np.float32
    assert (g["polygon_num_vertices"][:] == 13).all()
    np.testing.assert_array_equal(g["cell_id"][:, 0], cells.cell_id.to_numpy())
    assert (g["cell_id"][:, 1] == 1).all()
    exact = read_boundaries(str(run / "cell_boundaries.parquet"))
    shift = np.array(ORIGIN_UM)
    for i, cid in enumerate(cells.cell_id):
        # µm from the image corner; the simplified outline still covers most of the cell
        poly = shapely.Polygon(verts[1, i].reshape(-1, 2) + shift)
        truth = exact.loc[cid]
        assert poly.intersection(truth).area / poly.union(truth).area > 0.6, cid
    np.testing.assert_allclose(g["cell_summary"][:, 2], cells.area_um2)


def test_counts_and_groups(explorer):
    run, out = explorer
    adata = ad.read_h5ad(run / "cells.h5ad")
    g = _group(out / "cell_feature_matrix.zarr.zip")["cell_features"]
    keys = g.attrs["feature_keys"]
    assert keys == [*adata.var_names, "Total transcripts"]
    import scipy.sparse as sp

    m = sp.csr_matrix(
        (g["data"][:], g["indices"][:], g["indptr"][:]), shape=(len(keys), adata.n_obs)
    )
    np.testing.assert_array_equal(m[:-1].T.toarray(), adata.X.toarray())
    np.testing.assert_array_equal(m[-1].toarray().ravel(), adata.obs.n_transcripts.to_numpy())
    groups = _group(out / "analysis.zarr.zip")["cell_groups"]
    assert groups.attrs["grouping_names"] == ["nucleus"]
    idx = groups["0"]["indices"][:]
    assert sorted(idx.tolist()) == list(range(adata.n_obs))  # every cell in exactly one group


def test_transcripts(explorer):
    run, out = explorer
    tx = pd.read_parquet(run / "transcripts.parquet")
    genes = list(ad.read_h5ad(run / "cells.h5ad").var_names)
    g = _group(out / "transcripts.zarr.zip")
    assert g.attrs["number_rnas"] == len(tx) and g.attrs["gene_names"] == genes
    grids = g["grids"]
    level0 = grids["0"]
    ids, loc, gene = [], [], []
    for key in grids.attrs["grid_keys"][0]:
        tile = level0[key]
        ids.append(tile["id"][:, 0])
        loc.append(tile["location"][:, :2])
        gene.append(tile["gene_identity"][:, 0])
    ids, loc, gene = np.concatenate(ids), np.concatenate(loc), np.concatenate(gene)
    assert sorted(ids.tolist()) == list(range(len(tx)))  # every transcript once at level 0
    np.testing.assert_allclose(loc + np.array(ORIGIN_UM), tx[["x", "y"]].to_numpy()[ids], atol=1e-4)
    assert [genes[c] for c in gene] == tx.gene.astype(str).to_numpy()[ids].tolist()
    assert grids.attrs["number_levels"] == len(grids.attrs["grid_keys"]) >= 1


def test_morphology_image(explorer, small_run):
    chip, _ = small_run
    _, out = explorer
    src = zarr.open_array(str(chip / "image.zarr"))[:]
    with tifffile.TiffFile(out / "morphology.ome.tif") as tif:
        assert tif.is_ome
        page = tif.pages[0]
        assert page.dtype == np.uint8 and page.compression == tifffile.COMPRESSION.JPEG2000
        img = tif.series[0].asarray()
        ome = tif.ome_metadata
    assert img.shape[-2:] == src.shape[-2:]
    assert 'PhysicalSizeX="0.5"' in ome
    # brighter stain, brighter pixel (jpeg2000 is lossy: compare ranks, not values)
    a, b = src.ravel().astype(float), img.ravel().astype(float)
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_morphology_pyramid_halves_each_level(tmp_path):
    """A stain larger than one tile gets one level per halving, each the block mean of the last."""
    from types import SimpleNamespace

    from stseg_dist.export.xenium.image import write_morphology

    yy, xx = np.mgrid[:2100, :2600]
    stain = ((np.sin(yy / 40) + np.cos(xx / 55) + 2) * 10_000).astype(np.uint16)[None]
    chip = SimpleNamespace(_image_array=lambda: stain, pixel_size_um=0.25)
    write_morphology(tmp_path / "m.ome.tif", chip, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()
    with tifffile.TiffFile(tmp_path / "m.ome.tif") as tif:
        levels = [lvl.asarray() for lvl in tif.series[0].levels]
    # at least 6 levels, as sopa writes (5 halvings), though the third already fits one tile
    assert [lv.shape[-2:] for lv in levels] == [
        (2100, 2600),
        (1050, 1300),
        (525, 650),
        (262, 325),
        (131, 162),
        (65, 81),
    ]
    for fine, coarse in zip(levels, levels[1:], strict=False):
        h, w = coarse.shape[-2:]
        mean = fine[..., : 2 * h, : 2 * w].reshape(h, 2, w, 2).astype(float).mean(axis=(1, 3))
        assert np.abs(mean - coarse).mean() < 3  # lossy jpeg2000: close, not equal


def test_morphology_of_the_run_has_six_levels(explorer):
    _, out = explorer
    with tifffile.TiffFile(out / "morphology.ome.tif") as tif:
        shapes = [lvl.shape[-2:] for lvl in tif.series[0].levels]
        assert 'Name="DAPI"' in tif.ome_metadata
    assert len(shapes) == 6 and shapes[0] == (200, 260) and shapes[-1] == (6, 8)


@pytest.fixture(scope="module")
def annotated(small_run, tmp_path_factory):
    """A user's table after analysis: clusters and cell types (categorical), a score (not),
    and some cells filtered out.
    """
    _, run = small_run
    adata = ad.read_h5ad(run / "cells.h5ad")
    n = adata.n_obs
    adata.obs["leiden"] = pd.Categorical([str(i % 3) for i in range(n)])
    adata.obs["cell_type"] = pd.Categorical(["T cell" if i % 2 else "tumour" for i in range(n)])
    adata.obs["score"] = np.arange(n, dtype=float)
    kept = adata[2:].copy()  # two cells filtered in analysis
    path = tmp_path_factory.mktemp("table") / "annotated.h5ad"
    kept.write_h5ad(path)
    return path, adata.obs


def test_table_categories_become_cell_groups(small_run, annotated, tmp_path, capsys):
    chip, run = small_run
    table, obs = annotated
    out = tmp_path / "xe"
    argv = ["export", "--to", "xenium-explorer", str(run), "--out", str(out), "--table", str(table)]
    assert main([*argv, "--chip", str(chip)]) == 0
    groups = _group(out / "analysis.zarr.zip")["cell_groups"]
    assert groups.attrs["grouping_names"] == ["nucleus", "leiden", "cell_type"]  # not "score"
    cells = pd.read_parquet(run / "cells.parquet")
    names = dict(zip(groups.attrs["grouping_names"], groups.attrs["group_names"], strict=False))
    assert names["leiden"] == ["0", "1", "2", "not in table"]
    g = groups["1"]
    indices, indptr = g["indices"][:], g["indptr"][:]
    bounds = [*indptr.tolist(), len(indices)]
    members = {
        name: sorted(indices[bounds[k] : bounds[k + 1]].tolist())
        for k, name in enumerate(names["leiden"])
    }
    assert members["not in table"] == [0, 1]  # the filtered cells, by row of cells.parquet
    for label in ("0", "1", "2"):
        want = [i for i in range(2, len(cells)) if obs["leiden"].iloc[i] == label]
        assert members[label] == want


def test_bad_tables_are_refused_before_anything_is_written(small_run, annotated, tmp_path, capsys):
    chip, run = small_run
    table, obs = annotated
    other = ad.read_h5ad(table)
    other.obs_names = [str(int(i) + 10_000) for i in other.obs_names]
    other.obs = other.obs.drop(columns=["cell_id"])
    alien = tmp_path / "alien.h5ad"
    other.write_h5ad(alien)
    out = tmp_path / "xe"
    base = ["export", str(run), "--chip", str(chip), "--out", str(out)]
    cases = [
        (["--to", "xenium-explorer", "--table", str(alien)], "not cells of this run"),
        (["--to", "xenium-explorer", "--table", str(tmp_path / "no.h5ad")], "file not found"),
        (["--to", "spatialdata", "--table", str(table)], "--table is for --to xenium-explorer"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob(".xe.*"))
