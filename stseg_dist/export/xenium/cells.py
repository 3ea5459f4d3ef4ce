"""Explorer cell files: outlines (``cells.zarr.zip``), counts and a cell grouping."""

from __future__ import annotations

from math import ceil
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

MAX_VERTICES = 13  # per outline, closing vertex included, as the Explorer's cells.zarr holds them
NUCLEUS, CELL = 0, 1  # polygon set order in cells.zarr: "nucleus", "cell"


def fixed_vertices(geom, max_vertices: int = MAX_VERTICES, step: float = 0.25) -> np.ndarray:
    """Exterior of ``geom`` (its largest part) as exactly ``max_vertices`` (x, y) points.

    Exact pixel outlines have many vertices: simplified with a growing tolerance until they
    fit, padded by repeating the closing vertex; a shape that never fits becomes a circle of
    its area around its centroid.
    """
    if geom.geom_type == "MultiPolygon":
        geom = max(geom.geoms, key=lambda g: g.area)
    poly, tol = geom, 0.0
    while len(poly.exterior.coords) > max_vertices:
        tol += step
        poly = shapely.simplify(geom, tol)
        if poly.is_empty or poly.geom_type != "Polygon" or tol > 50 * step:
            poly = shapely.Point(geom.centroid).buffer(np.sqrt(geom.area / np.pi), quad_segs=3)
            if len(poly.exterior.coords) > max_vertices:
                poly = shapely.simplify(poly, step)
            break
    coords = np.asarray(poly.exterior.coords)[:max_vertices]
    return np.pad(coords, ((0, max_vertices - len(coords)), (0, 0)), mode="edge")


def _zip_group(path: Path, attrs: dict | None = None):
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(path, mode="w")
    return store, zarr.group(store=store, zarr_format=2, attributes=attrs or {})


def explorer_cell_ids(cell_ids: np.ndarray) -> np.ndarray:
    """(n, 2) uint32: the cell_id and the dataset suffix 1, as the Explorer stores cell names."""
    ids = np.asarray(cell_ids, np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() > np.iinfo(np.uint32).max):
        raise ValueError("cell_id does not fit the Explorer's uint32 cell IDs")
    return np.stack([ids, np.ones_like(ids)], axis=1).astype(np.uint32)


def write_cells(
    path: Path,
    cells: pd.DataFrame,
    cell_boundaries: Path,
    nucleus_boundaries: Path,
    origin: tuple[float, float],
) -> None:
    """``cells.zarr.zip``: per cell its outline and its nucleus outline, in µm from the image
    corner.
    """
    from ...boundaries import read_boundaries

    ids = cells["cell_id"].to_numpy()
    shift = np.array(origin)
    outlines = read_boundaries(str(cell_boundaries))
    nuclei = read_boundaries(str(nucleus_boundaries))
    missing = np.setdiff1d(ids, outlines.index.to_numpy())
    if len(missing):
        raise ValueError(f"{cell_boundaries}: no outline for cells {missing[:5].tolist()}")
    n = len(ids)
    verts = np.zeros((2, n, 2 * MAX_VERTICES), np.float32)
    summary = np.zeros((n, 7), np.float64)
    for i, cid in enumerate(ids):
        cell = outlines.loc[cid]
        verts[CELL, i] = (fixed_vertices(cell) - shift).ravel()
        c = np.asarray(cell.centroid.coords[0]) - shift
        summary[i, [0, 1, 2]] = c[0], c[1], cell.area
        if cid in nuclei.index:
            nuc = nuclei.loc[cid]
            verts[NUCLEUS, i] = (fixed_vertices(nuc) - shift).ravel()
            nc = np.asarray(nuc.centroid.coords[0]) - shift
            summary[i, [3, 4, 5]] = nc[0], nc[1], nuc.area
        else:  # no nucleus: a point at the cell centre draws nothing
            verts[NUCLEUS, i] = np.tile(c, MAX_VERTICES)
            summary[i, [3, 4]] = c
    attrs = {
        "major_version": 5,
        "minor_version": 0,
        "name": "CellSegmentationDataset",
        "number_cells": n,
        "spatial_units": "microns",
        "polygon_set_names": ["nucleus", "cell"],
        "polygon_set_display_names": ["Nucleus boundaries", "Cell boundaries"],
        "polygon_set_descriptions": ["stseg-dist nuclei", "stseg-dist cells"],
    }
    store, g = _zip_group(path, attrs)
    with store:
        half, quarter = max(1, ceil(n / 2)), max(1, ceil(n / 4))
        g.create_array(
            "polygon_vertices", data=verts, chunks=(1, quarter, ceil(2 * MAX_VERTICES / 4))
        )
        g.create_array(
            "polygon_num_vertices", data=np.full((2, n), MAX_VERTICES, np.int32), chunks=(1, half)
        )
        g.create_array("cell_id", data=explorer_cell_ids(ids), chunks=(half, 1))
        g.create_array(
            "cell_summary",
            data=summary,
            chunks=(max(n, 1), 1),
            attributes={
                "column_names": [
                    "cell_centroid_x",
                    "cell_centroid_y",
                    "cell_area",
                    "nucleus_centroid_x",
                    "nucleus_centroid_y",
                    "nucleus_area",
                    "z_level",
                ],
                "column_descriptions": [
                    "Cell centroid in X",
                    "Cell centroid in Y",
                    "Cell area",
                    "Nucleus centroid in X",
                    "Nucleus centroid in Y",
                    "Nucleus area",
                    "z_level",
                ],
            },
        )
        g.create_array("seg_mask_value", data=np.asarray(ids, np.uint32), chunks=(half,))


def write_matrix(path: Path, adata) -> None:
    """``cell_feature_matrix.zarr.zip``: counts as CSR over features (genes, then the total)."""
    import scipy.sparse as sp

    counts = sp.csr_matrix(adata.X.T).astype(np.int64)  # genes x cells
    total = np.asarray(counts.sum(axis=0)).ravel()
    nz = np.flatnonzero(total)
    data = np.concatenate([counts.data, total[nz]])
    indices = np.concatenate([counts.indices, nz])
    indptr = np.append(counts.indptr, counts.indptr[-1] + len(nz))
    keys = [*map(str, adata.var_names), "Total transcripts"]
    attrs = {
        "major_version": 3,
        "minor_version": 0,
        "number_cells": int(adata.n_obs),
        "number_features": len(keys),
        "feature_keys": keys,
        "feature_ids": keys,
        "feature_types": ["gene"] * adata.n_vars + ["aggregate_gene"],
    }
    store, root = _zip_group(path)
    with store:
        g = root.create_group("cell_features", attributes=attrs)
        ids = explorer_cell_ids(adata.obs["cell_id"].to_numpy())
        for name, arr in (
            ("cell_id", ids),
            ("data", data),
            ("indices", indices),
            ("indptr", indptr),
        ):
            arr = np.asarray(arr).astype(np.uint32)
            g.create_array(name, data=arr, chunks=tuple(max(1, s) for s in arr.shape))


NOT_IN_TABLE = "not in table"


def cell_groups(cells: pd.DataFrame, table=None, table_name: str = "table") -> dict:
    """Groupings for the Explorer: by nucleus, then every categorical ``obs`` column of a user's
    AnnData (clusters, cell types), matched to the run's cells by ``obs["cell_id"]`` (or the
    ``obs_names``, as cells.h5ad names its rows). Cells the table leaves out (filtered in
    analysis) go to the group "not in table"; a table row that is no cell of the run is an error.
    """
    from ...errors import InputError

    groups = {
        "nucleus": np.where(cells["has_nucleus"].to_numpy(), "with nucleus", "without nucleus")
    }
    if table is None:
        return groups
    obs = table.obs
    raw = obs["cell_id"] if "cell_id" in obs else pd.Series(obs.index, index=obs.index)
    ids = pd.to_numeric(pd.Series(np.asarray(raw)), errors="coerce")
    if ids.isna().any() or (ids != ids.round()).any():
        bad = np.asarray(raw)[ids.isna().to_numpy() | (ids != ids.round()).to_numpy()][:5]
        raise InputError(
            f"{table_name}: cells are matched by obs['cell_id'] (or the obs names, as in "
            f"cells.h5ad); these are not cell IDs: {list(map(str, bad))}"
        )
    ids = ids.to_numpy(np.int64)
    run_ids = cells["cell_id"].to_numpy()
    unknown = np.setdiff1d(ids, run_ids)
    if len(unknown):
        raise InputError(
            f"{table_name}: {len(unknown)} cell_id(s) are not cells of this run, e.g. "
            f"{unknown[:5].tolist()}: is it this run's table?"
        )
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"{table_name}: a cell_id appears twice")
    row = pd.Series(np.arange(len(ids)), index=ids).reindex(run_ids)
    has = row.notna().to_numpy()
    for col in obs.columns:
        if not isinstance(obs[col].dtype, pd.CategoricalDtype) or col in ("cell_id", "region"):
            continue
        values = np.full(len(run_ids), NOT_IN_TABLE, dtype=object)
        taken = obs[col].astype(str).to_numpy()[row[has].astype(int).to_numpy()]
        values[has] = taken
        name = str(col) if str(col) not in groups else f"{col} (table)"
        groups[name] = values
    return groups


def write_analysis(path: Path, cells: pd.DataFrame, groups: dict | None = None) -> None:
    """``analysis.zarr.zip``: groupings of the cells (by nucleus, and a table's categories)."""
    groups = groups or cell_groups(cells)
    cats = {name: sorted(set(np.asarray(values).tolist())) for name, values in groups.items()}
    attrs = {
        "major_version": 1,
        "minor_version": 0,
        "number_groupings": len(groups),
        "grouping_names": list(groups),
        "group_names": list(cats.values()),
    }
    store, root = _zip_group(path)
    with store:
        g = root.create_group(
            "cell_groups", attributes=attrs
        )  # attributes at creation: zip members are final
        for i, (name, values) in enumerate(groups.items()):
            values = np.asarray(values)
            members = [np.flatnonzero(values == c) for c in cats[name]]
            sub = g.create_group(str(i))
            indices = np.concatenate(members) if members else np.zeros(0, np.int64)
            indptr = (
                np.concatenate([[0], np.cumsum([len(m) for m in members])[:-1]])
                if members
                else np.zeros(0)
            )
            for key, arr in (("indices", indices), ("indptr", indptr)):
                arr = np.asarray(arr).astype(np.uint32)
                sub.create_array(key, data=arr, chunks=(max(1, len(arr)),))
