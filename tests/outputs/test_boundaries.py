"""Cell and nucleus boundaries: exact pixel outlines, one per labelled cell, whatever the tiling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
import zarr

from stseg_dist.boundaries import label_polygons, pixel_runs
from tests.conftest import make_blob_chip, one_tile_vs_many


def test_pixel_runs_cover_every_labelled_pixel():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, (30, 40)).astype(np.uint32)
    val, rows, c0, c1 = pixel_runs(lab)
    back = np.zeros_like(lab)
    for v, r, a, b in zip(val, rows, c0, c1, strict=False):
        assert (lab[r, a:b] == v).all()
        back[r, a:b] = v
    np.testing.assert_array_equal(back, lab)


def test_polygons_are_exact_outlines_in_um():
    lab = np.zeros((12, 14), np.uint32)
    lab[1:6, 1:6] = 1
    lab[3, 3] = 0  # a hole
    lab[7, 7] = 2  # two pieces touching only at a corner: not 4-connected
    lab[8, 8] = 2
    lab[2:4, 9:13] = 3
    lab[10, 0:3] = 4
    ids, geoms = label_polygons(lab, np.array([1, 2, 3]), (100, 200), 0.5, (10.0, 20.0))
    assert ids.tolist() == [1, 2, 3]  # label 4 not asked for
    g1, g2, g3 = geoms
    assert g1.geom_type == "Polygon" and len(g1.interiors) == 1 and g1.is_valid
    assert g1.area == pytest.approx(24 * 0.25)
    assert (
        g2.geom_type == "MultiPolygon" and len(g2.geoms) == 2 and g2.area == pytest.approx(2 * 0.25)
    )
    # label 3: cols 9..12, rows 2..3 of a window at global (100, 200): x = 10 + (200 + c) * 0.5
    assert g3.bounds == pytest.approx(
        (10 + 209 * 0.5, 20 + 102 * 0.5, 10 + 213 * 0.5, 20 + 104 * 0.5)
    )
    assert shapely.get_num_coordinates(g3) == 5  # a rectangle: collinear vertices dropped


def _read_geo(path):
    import geopandas as gpd

    gdf = gpd.read_parquet(path)
    assert gdf.geometry.name == "geometry"
    # the unit is recorded: an engineering CRS in micrometres (no map projection)
    assert gdf.crs.is_engineering and {a.unit_name for a in gdf.crs.axis_info} == {"micrometre"}
    assert gdf.cell_id.is_unique
    return gdf.set_index("cell_id").sort_index()


@pytest.mark.ray
def test_boundaries_one_per_cell_and_tiling_invariant(tmp_path, ray_module):
    chip = make_blob_chip(tmp_path / "chip", shape=(200, 260), n_nuclei=45, n_transcripts=6_000)
    one, many, (cells_one, nuclei_one), (cells_many, nuclei_many) = one_tile_vs_many(
        chip, tmp_path, ["runtime.progress=false"], tile_um=24, chunk_px=16
    )
    assert many["n_tiles"] > 20 and one["n_tiles"] == 1
    # one tile: every outline is the cells kernel's; many: cells cut by a core edge are joined
    # from their pieces in the cores that hold them, and no label raster is read again
    assert one["boundaries"]["re_read"] == one["boundaries"]["joined_from_cores"] == 0
    assert one["boundaries"]["from_cells_kernel"] == one["counts"]["n_cells"]
    assert many["boundaries"]["from_cells_kernel"] > 0
    assert many["boundaries"]["joined_from_cores"] > 0 and many["boundaries"]["re_read"] == 0
    runs = {}
    for name in ("one", "many"):
        out = tmp_path / name
        runs[name] = (
            _read_geo(out / "cell_boundaries.parquet"),
            _read_geo(out / "nucleus_boundaries.parquet"),
        )
        table = pd.read_parquet(out / "cells.parquet").set_index("cell_id").sort_index()
        cells_b, nuclei_b = runs[name]
        # every cell of the table has exactly one outline, whose area is the cell's pixel area
        assert cells_b.index.tolist() == table.index.tolist()
        np.testing.assert_allclose(cells_b.area.to_numpy(), table.area_um2.to_numpy())
        assert cells_b.is_valid.all()
        # every labelled nucleus has one outline, inside its cell
        nuc_ids = np.unique(zarr.open_array(str(out / "labels.zarr" / "nuclei"))[:])
        assert nuclei_b.index.tolist() == nuc_ids[nuc_ids > 0].tolist()
        np.testing.assert_allclose(
            nuclei_b.area.to_numpy(), table.loc[nuclei_b.index, "nucleus_area_um2"]
        )
        assert cells_b.loc[nuclei_b.index].covers(nuclei_b).all()
    # Same pixels, same outline, whatever the tiling. (Where the two runs' label rasters differ,
    # e.g. touching nuclei split differently in a small window, the outlines follow the raster.)
    for (a, b), (la, lb) in zip(
        zip(runs["one"], runs["many"], strict=False),
        ((cells_one, cells_many), (nuclei_one, nuclei_many)),
        strict=False,
    ):
        assert a.index.tolist() == b.index.tolist()
        differ = np.unique(np.concatenate([la[la != lb], lb[la != lb]]))
        same = a.index[~a.index.isin(differ)]
        assert len(same) >= 0.8 * len(a)
        assert a.loc[same].geom_equals_exact(b.loc[same], tolerance=0).all()
    # the outlines of a many-tile run are those of its whole label raster vectorised at once
    for raster, gdf in ((cells_many, runs["many"][0]), (nuclei_many, runs["many"][1])):
        ids, geoms = label_polygons(raster, np.unique(raster[raster > 0]), (0, 0), 0.5, (0.0, 0.0))
        assert ids.tolist() == gdf.index.tolist()
        assert shapely.equals_exact(geoms, gdf.loc[ids].geometry.to_numpy(), tolerance=0).all()


@pytest.mark.ray
def test_cells_wider_than_the_halo_are_vectorised_whole(tmp_path, ray_module):
    """With a halo smaller than the cells, the owner re-reads a window grown around them."""
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline

    chip = make_blob_chip(tmp_path / "chip", shape=(160, 200), n_nuclei=25, n_transcripts=4_000)
    config = load_config(
        overrides=parse_set(
            [
                "tiling.tile_size_um=16",
                "tiling.chunk_px=16",
                "tiling.halo_um=2",
                "runtime.progress=false",
            ]
        ),
        use_env=False,
    )
    run_pipeline(chip, str(tmp_path / "out"), config, local=True)
    labels = zarr.open_array(str(tmp_path / "out" / "labels.zarr" / "cells"))[:]
    gdf = _read_geo(tmp_path / "out" / "cell_boundaries.parquet")
    ids, geoms = label_polygons(labels, np.unique(labels[labels > 0]), (0, 0), 0.5, (0.0, 0.0))
    assert gdf.index.tolist() == ids.tolist()
    assert shapely.equals_exact(geoms, gdf.loc[ids].geometry.to_numpy(), tolerance=0).all()


def test_traced_outlines_equal_the_union_of_pixel_runs():
    """The traced outlines are the union of each cell's pixel runs, vertex for vertex (after
    normalising both), on rasters with holes, islands in holes, diagonal touches and cells in
    several pieces; only cells that are not one simple piece go to the union.
    """
    from stseg_dist.boundaries import traced_outlines, union_outlines

    rng = np.random.default_rng(0)
    rasters = []
    for seed in range(8):  # Voronoi cells with pixels knocked out: holes, pieces, touches
        r = np.random.default_rng(seed)
        yy, xx = np.mgrid[:40, :50]
        sy, sx = r.uniform(0, 40, 15), r.uniform(0, 50, 15)
        d = (yy[..., None] - sy) ** 2 + (xx[..., None] - sx) ** 2
        lab = (np.argmin(d, axis=-1) + 1).astype(np.uint32)
        lab[r.random(lab.shape) < 0.03 * (seed % 4)] = 0
        rasters.append(lab)
    ring = np.zeros((11, 11), np.uint32)
    ring[1:10, 1:10] = 5
    ring[3:8, 3:8] = 0  # a hole
    ring[5, 5] = 5  # an island of the same cell inside it: two shells
    ring[4, 4] = 6  # another cell inside the hole
    rasters.append(ring)
    n_traced = 0
    for lab in rasters:
        ids = np.unique(lab[lab > 0])
        ids = ids[rng.random(len(ids)) < 0.8]  # not every label asked for
        found, geoms, rest = traced_outlines(lab, ids)
        ref_ids, ref = union_outlines(lab, ids)
        assert sorted([*found.tolist(), *rest.tolist()]) == ref_ids.tolist()
        pos = np.searchsorted(ref_ids, found)
        assert (
            shapely.to_wkb(shapely.normalize(geoms)) == shapely.to_wkb(shapely.normalize(ref[pos]))
        ).all()
        assert shapely.is_valid(geoms).all()
        n_traced += len(found)
        all_ids, all_geoms = label_polygons(lab, ids, (3, 4), 0.5, (1.0, 2.0))
        assert all_ids.tolist() == ref_ids.tolist()
        moved = shapely.transform(ref, lambda xy: (xy + [4, 3]) * 0.5 + [1.0, 2.0])
        assert (shapely.to_wkb(all_geoms) == shapely.to_wkb(shapely.normalize(moved))).all()
    assert n_traced > 20
    found, _, rest = traced_outlines(ring, np.array([5, 6]))
    assert found.tolist() == [6] and rest.tolist() == [5]  # two shells: left to the union


@pytest.mark.parametrize(
    "pixel_size_um, origin_um, tile_um, extra",
    [
        (0.5, (0.0, 0.0), 40, []),
        (0.2125, (13.7, -5.3), 16, ["cells.expansion.distance_um=2"]),
    ],
)
def test_kernel_outlines_equal_the_labels_read_again(
    tmp_path, monkeypatch, pixel_size_um, origin_um, tile_um, extra
):
    """The outlines the cells kernel traces in its core, and those it joins from the pieces of a
    cell cut by core edges, are, byte for byte, those the boundaries pass finds re-reading the
    global labels for every cell (as it does for a checkpoint written before the kernel traced
    them); also at a pixel size and origin that are not exact binary fractions (the pieces'
    shared edges are the same floats), and with cells cut into several pieces.
    """
    from stseg_dist import driver
    from stseg_dist.config import load_config, parse_set

    chip = make_blob_chip(
        tmp_path / "chip",
        shape=(200, 260) if pixel_size_um == 0.5 else (300, 400),
        n_nuclei=45 if pixel_size_um == 0.5 else 120,
        n_transcripts=6_000,
        pixel_size_um=pixel_size_um,
        origin_um=origin_um,
    )
    config = load_config(
        overrides=parse_set([f"tiling.tile_size_um={tile_um}", "tiling.chunk_px=16", *extra]),
        use_env=False,
    )
    kernel = driver.run_pipeline(chip, str(tmp_path / "kernel"), config, local=True)
    monkeypatch.setattr(driver, "core_pieces", lambda *a: None)  # no core outlines known
    again = driver.run_pipeline(chip, str(tmp_path / "again"), config, local=True)
    assert kernel["boundaries"]["from_cells_kernel"] > 0
    assert kernel["boundaries"]["joined_from_cores"] > 0 and kernel["boundaries"]["re_read"] == 0
    assert again["boundaries"]["re_read"] == again["counts"]["n_cells"]
    assert again["boundaries"]["from_cells_kernel"] == 0
    for name in ("cell_boundaries.parquet", "nucleus_boundaries.parquet"):
        assert (tmp_path / "kernel" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
