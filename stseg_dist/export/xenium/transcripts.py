"""``transcripts.zarr.zip``: transcripts on a grid pyramid (each level a quarter of the one below),
plus per-gene density grids, as the Explorer reads them.

Positions (float32) and gene codes (uint16) of every transcript are held in memory, about 10
bytes per transcript (0.4 GB for 40 million); the parquet file is read column by column.
"""

from __future__ import annotations

from math import ceil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

GRID_UM = 250.0  # level-0 grid cell, as in Xenium's own files
MAX_LEVELS = 15
DENSITY_UM = 10.0
METRICS_UM = 20.0
QUALITY = 40.0  # the run keeps no per-transcript quality the Explorer could use


def _positions(
    url: Path, genes: list[str], origin: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    pf = pq.ParquetFile(url)
    xy = np.empty((pf.metadata.num_rows, 2), np.float32)
    codes = np.empty(pf.metadata.num_rows, np.uint16)
    if len(genes) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(genes)} genes: more than the Explorer's uint16 gene codes hold")
    n = 0
    for batch in pf.iter_batches(columns=["x", "y", "gene"], batch_size=1 << 20):
        k = batch.num_rows
        xy[n : n + k, 0] = batch.column("x").to_numpy() - origin[0]
        xy[n : n + k, 1] = batch.column("y").to_numpy() - origin[1]
        cat = pd.Categorical(batch.column("gene").to_pandas().astype(str), categories=genes)
        if (cat.codes < 0).any():
            raise ValueError(f"{url}: a transcript's gene is not in the cell table's genes")
        codes[n : n + k] = cat.codes
        n += k
    return xy, codes


def write_transcripts(
    path: Path, url: Path, genes: list[str], origin: tuple[float, float], seed: int = 0
) -> None:
    import zarr
    from zarr.storage import ZipStore

    xy, codes = _positions(url, genes, origin)
    n = len(xy)
    rng = np.random.default_rng(seed)
    extent = xy.max(axis=0) if n else np.zeros(2, np.float32)
    levels = [np.arange(n)]
    while len(levels) < MAX_LEVELS:
        size = GRID_UM * 2 ** (len(levels) - 1)
        if ceil(max(extent[0], 1e-6) / size) * ceil(max(extent[1], 1e-6) / size) <= 1:
            break
        prev = levels[-1]
        levels.append(np.sort(rng.choice(prev, len(prev) // 4, replace=False)))

    attrs = {
        "codeword_count": len(genes),
        "codeword_gene_mapping": list(range(len(genes))),
        "codeword_gene_names": genes,
        "gene_names": genes,
        "gene_index_map": {g: i for i, g in enumerate(genes)},
        "number_genes": len(genes),
        "spatial_units": "micron",
        "coordinate_space": "refined-final_global_micron",
        "major_version": 4,
        "minor_version": 1,
        "name": "RnaDataset",
        "number_rnas": n,
        "dataset_uuid": "stseg-dist",
        "data_format": 0,
    }
    grid_attrs = {
        "grid_key_names": ["grid_x_loc", "grid_y_loc"],
        "grid_zip": False,
        "grid_size": [GRID_UM],
        "grid_array_shapes": [],
        "grid_number_objects": [],
        "grid_keys": [],
        "number_levels": len(levels),
    }
    # per level: (rows sorted by grid cell, first index, count, key) of each non-empty cell
    tiles = []
    for level, rows in enumerate(levels):
        size = GRID_UM * 2**level
        cell = np.floor(xy[rows] / size).clip(0).astype(np.int64)
        key = cell[:, 0] * (1 << 32) + cell[:, 1]
        order = np.argsort(key, kind="stable")
        uniq, first, counts = np.unique(key[order], return_index=True, return_counts=True)
        names = [f"{k >> 32},{k & 0xFFFFFFFF}" for k in uniq.tolist()]
        grid_attrs["grid_array_shapes"].append([{}] * len(uniq))
        grid_attrs["grid_number_objects"].append(counts.tolist())
        grid_attrs["grid_keys"].append(names)
        tiles.append((rows[order], first, counts, names))
    density = _density(xy, codes, genes)
    attrs.update(density.pop("root_attrs"))
    # Attributes are given at creation: a zip store cannot rewrite a member.
    with ZipStore(path, mode="w") as store:
        root = zarr.group(store=store, zarr_format=2, attributes=attrs)
        grids = root.create_group("grids", attributes=grid_attrs)
        for level, (rows, first, counts, names) in enumerate(tiles):
            lg = grids.create_group(str(level))
            for name, a, m in zip(names, first, counts, strict=True):
                _tile(lg.create_group(name), rows[a : a + m], xy, codes)
        g = root.create_group("density").create_group("gene", attributes=density.pop("gene_attrs"))
        for name, arr in density.pop("gene").items():
            g.create_array(name, data=arr, chunks=(max(1, len(arr)),))
        for name, arr in density.items():
            root.create_array(
                name,
                data=arr,
                chunks=arr.shape[:1] + (1,) * (arr.ndim - 1)
                if name.endswith("category")
                else arr.shape,
            )


def _tile(g, idx: np.ndarray, xy: np.ndarray, codes: np.ndarray) -> None:
    m = len(idx)
    loc = np.zeros((m, 3), np.float32)
    loc[:, :2] = xy[idx]
    loc[0, 2] = 1e-4  # an all-zero z column is misread; sopa's writer does the same
    ids = np.stack([idx.astype(np.uint32), np.full(m, 65535, np.uint32)], axis=1)
    arrays = {
        "valid": np.ones((m, 1), np.uint8),
        "status": np.ones((m, 1), np.uint8),
        "location": loc,
        "gene_identity": codes[idx, None],
        "quality_score": np.full((m, 1), QUALITY, np.float32),
        "codeword_identity": np.stack([codes[idx], np.full(m, 65535, np.uint16)], axis=1),
        "uuid": ids,
        "id": ids,
    }
    for name, arr in arrays.items():
        g.create_array(name, data=arr, chunks=(m, 1))


def _density(xy: np.ndarray, codes: np.ndarray, genes: list[str]) -> dict:
    """Per-gene counts on a 10 µm grid and total counts on a 20 µm grid, with their attributes."""
    import scipy.sparse as sp

    n_genes = max(len(genes), 1)
    lo = np.floor(xy.min(axis=0) / DENSITY_UM) * DENSITY_UM if len(xy) else np.zeros(2)
    hi = xy.max(axis=0) if len(xy) else np.zeros(2)
    cols, rows = (np.ceil((hi - lo) / DENSITY_UM).astype(int) + 1).tolist()
    c = np.floor((xy[:, 0] - lo[0]) / DENSITY_UM).astype(np.int64).clip(0, cols - 1)
    r = np.floor((xy[:, 1] - lo[1]) / DENSITY_UM).astype(np.int64).clip(0, rows - 1)
    dens = sp.coo_matrix(
        (np.ones(len(xy), np.uint32), (codes.astype(np.int64) * rows + r, c)),
        shape=(n_genes * rows, cols),
    ).tocsr()
    cat = np.zeros((n_genes, 9), bool)
    cat[:, 0] = True  # every gene of the run is a gene (control probes were dropped on input)
    mx, my = (np.ceil((hi - lo) / METRICS_UM).astype(int) + 1).tolist()
    metrics = np.zeros((my, mx, 4), np.float32)
    mc = np.floor((xy[:, 0] - lo[0]) / METRICS_UM).astype(np.int64).clip(0, mx - 1)
    mr = np.floor((xy[:, 1] - lo[1]) / METRICS_UM).astype(np.int64).clip(0, my - 1)
    np.add.at(metrics[:, :, 0], (mr, mc), 1.0)
    metrics[:, :, 1] = metrics[:, :, 0]  # decoded == total: no negative controls are kept
    return {
        "gene": {
            "data": np.minimum(dens.data, 65535).astype(np.uint16),
            "indices": dens.indices.astype(np.uint16),
            "indptr": dens.indptr.astype(np.uint32),
        },
        "gene_attrs": {
            "grid_size": [DENSITY_UM, DENSITY_UM],
            "rows": rows,
            "cols": cols,
            "origin": {"x": float(lo[0]), "y": float(lo[1])},
            "gene_names": genes,
        },
        "gene_category": cat,
        "codeword_category": cat,
        "metrics_density": metrics,
        "root_attrs": {
            "metrics_density_x_count": mx,
            "metrics_density_x_origin": float(lo[0]),
            "metrics_density_x_spacing": METRICS_UM,
            "metrics_density_y_count": my,
            "metrics_density_y_origin": float(lo[1]),
            "metrics_density_y_spacing": METRICS_UM,
        },
    }
