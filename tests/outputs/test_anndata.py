"""cells.h5ad is what scanpy and squidpy take as it is: counts, µm coordinates, the cell table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def test_scanpy_runs_on_cells_h5ad(small_run):
    import anndata as ad
    import scanpy as sc

    _, run = small_run
    adata = ad.read_h5ad(run / "cells.h5ad")
    cells = pd.read_parquet(run / "cells.parquet")
    assert adata.n_obs == len(cells) > 20
    for col in cells.columns:  # every cell-table column is in obs, row for row
        np.testing.assert_array_equal(adata.obs[col].to_numpy(), cells[col].to_numpy())
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["x", "y"]].to_numpy())  # µm
    assert np.issubdtype(adata.X.dtype, np.number)
    counts = adata.X.copy()

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=min(5, adata.n_vars - 1))
    assert adata.obsm["X_pca"].shape == (adata.n_obs, min(5, adata.n_vars - 1))
    assert np.isfinite(adata.obsm["X_pca"]).all()
    expected = np.log1p(counts.toarray() / np.maximum(counts.sum(axis=1), 1).A * 1e4)
    np.testing.assert_allclose(adata.X.toarray(), expected, rtol=1e-5)


def test_squidpy_spatial_neighbors_on_cells_h5ad(small_run):
    """Not in the test extra: no squidpy release installs with the pinned stack (1.8 wants
    imagecodecs<2026, 1.6.2-1.7 dask<=2024.11.2, 1.6.1 imports a view class anndata 0.12 dropped).
    """
    import anndata as ad

    sq = pytest.importorskip("squidpy.gr", reason="squidpy does not install with the pinned stack")
    adata = ad.read_h5ad(small_run[1] / "cells.h5ad")
    sq.spatial_neighbors(adata, coord_type="generic", radius=15.0)
    conn = adata.obsp["spatial_connectivities"]
    dist = adata.obsp["spatial_distances"].tocoo()
    assert conn.shape == (adata.n_obs, adata.n_obs) and conn.nnz > 0
    # neighbours are within 15 µm: the coordinates are in µm, not pixels
    xy = adata.obsm["spatial"]
    np.testing.assert_allclose(dist.data, np.hypot(*(xy[dist.row] - xy[dist.col]).T), rtol=1e-6)
    assert dist.data.max() <= 15.0


def test_var_holds_feature_metadata(small_run):
    import anndata as ad

    _, run = small_run
    adata = ad.read_h5ad(run / "cells.h5ad")
    assert (adata.var["feature_types"] == "Gene Expression").all()  # the chip lists no features
    np.testing.assert_array_equal(
        adata.var["n_transcripts"].to_numpy(), np.asarray(adata.X.sum(axis=0)).ravel()
    )
