"""Xenium Explorer export: the files the Explorer opens from a folder (``experiment.xenium``).

The file layouts follow 10x's Xenium output specification as sopa's explorer writer documents
it (zarr v2 groups in zip stores, a pyramidal OME-TIFF); the code is this project's own. The
Explorer's coordinates are µm from the image's top-left corner, so every µm value of the run is
shifted by the chip origin, and the image's pixel size is the chip's.

- ``morphology.ome.tif``: the stain as uint8, one pyramid level per halving, tiled 1024 px;
- ``cells.zarr.zip``: cell and nucleus outlines (at most ``MAX_VERTICES`` vertices each);
- ``cell_feature_matrix.zarr.zip``: the cell x gene counts;
- ``analysis.zarr.zip``: cell groupings: with or without a nucleus, and every categorical
  ``obs`` column of a user's AnnData (``--table``: clusters, cell types);
- ``transcripts.zarr.zip``: transcripts on a grid pyramid, with gene densities;
- ``experiment.xenium``: the manifest the Explorer opens.

An Explorer cell name ``xxxxxxxx-1`` encodes the run's ``cell_id`` (base 16, letters a-p).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import _run
from .cells import cell_groups, write_analysis, write_cells, write_matrix
from .image import write_morphology
from .transcripts import write_transcripts

EXPERIMENT = "experiment.xenium"
FILES = {
    "morphology": "morphology.ome.tif",
    "transcripts": "transcripts.zarr.zip",
    "cells": "cells.zarr.zip",
    "matrix": "cell_feature_matrix.zarr.zip",
    "analysis": "analysis.zarr.zip",
}


def write_explorer(files: _run.RunFiles, path: Path, table: str | None = None) -> None:
    """Write every Explorer file of the run into the new folder ``path``; ``table`` (an .h5ad
    with the run's cells, e.g. after clustering) adds its categorical columns as groupings.
    """
    import anndata as ad
    import pandas as pd

    from ... import constants as K

    path = Path(path)
    origin = files.origin_um
    cells = pd.read_parquet(files.path(K.CELLS_PARQUET))
    groups = cell_groups(cells, read_table(table), table) if table else None  # before writing
    path.mkdir(parents=True)
    adata = ad.read_h5ad(files.path(K.CELLS_H5AD))
    if adata.obs[K.CELL_ID].tolist() != cells[K.CELL_ID].tolist():
        raise RuntimeError(
            f"{files.path(K.CELLS_H5AD)} and {files.path(K.CELLS_PARQUET)} list different cells"
        )
    write_cells(
        path / FILES["cells"],
        cells,
        files.path(K.CELL_BOUNDARIES_PARQUET),
        files.path(K.NUCLEUS_BOUNDARIES_PARQUET),
        origin,
    )
    write_matrix(path / FILES["matrix"], adata)
    write_analysis(path / FILES["analysis"], cells, groups)
    write_transcripts(
        path / FILES["transcripts"],
        files.path(K.TRANSCRIPTS_PARQUET),
        list(adata.var_names),
        origin,
    )
    write_morphology(path / FILES["morphology"], files.chip, path / ".pyramid")
    manifest = experiment(files, cells, len(adata.var_names))
    (path / EXPERIMENT).write_text(json.dumps(manifest, indent=2))


def read_table(table: str):
    """The user's AnnData, with a clear error for a missing or unreadable file."""
    import anndata as ad

    from ...errors import InputError

    if not Path(table).is_file():
        raise InputError(f"--table {table}: file not found")
    try:
        backed = ad.read_h5ad(table, backed="r")  # the counts stay on disk: obs is all we need
    except Exception as exc:  # h5py and anndata raise many kinds
        raise InputError(
            f"--table {table}: not a readable .h5ad ({type(exc).__name__}: {exc})"
        ) from exc
    obs = backed.obs.copy()
    backed.file.close()
    return ad.AnnData(obs=obs)


def summary(files: _run.RunFiles, cells, n_genes: int) -> dict:
    """The manifest's summary fields, as Xenium defines them: the median transcripts per cell,
    and decoded transcripts per 100 µm² of the imaged region.
    """
    import numpy as np

    counts = files.run.get("counts", {})
    n_tx = int(counts.get("n_transcripts", 0))
    h, w = files.chip.shape_yx
    area_um2 = h * w * files.pixel_size_um**2
    per_cell = cells["n_transcripts"].to_numpy()
    return {
        "num_cells": len(cells),
        "transcripts_per_cell": round(float(np.median(per_cell))) if len(per_cell) else 0,
        "transcripts_per_100um": round(n_tx / area_um2 * 100, 2) if area_um2 > 0 else 0,
        "panel_num_targets_predesigned": int(n_genes),
    }


def experiment(files: _run.RunFiles, cells, n_genes: int) -> dict:
    name = Path(str(files.run.get("chip", files.root))).name or "stseg"
    stats = summary(files, cells, n_genes)
    return {
        "major_version": 6,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": name,
        "region_name": files.root.name,
        "experiment_uuid": "N/A",
        "panel_tissue_type": "N/A",
        "run_start_time": files.run.get("started", "N/A"),
        "run_finish_time": files.run.get("finished", "N/A"),
        "preservation_method": "N/A",
        "num_cells": stats["num_cells"],
        "transcripts_per_cell": stats["transcripts_per_cell"],
        "transcripts_per_100um": stats["transcripts_per_100um"],
        "cassette_name": "N/A",
        "slide_id": "N/A",
        "panel_design_id": "N/A",
        "panel_name": "N/A",
        "panel_organism": "N/A",
        "panel_num_targets_predesigned": stats["panel_num_targets_predesigned"],
        "panel_num_targets_custom": 0,
        "pixel_size": files.pixel_size_um,
        "instrument_sn": "N/A",
        "instrument_sw_version": "N/A",
        "analysis_sw_version": f"stseg-dist {files.run.get('stseg_version') or ''}".strip(),
        "cassette_uuid": "",
        "roi_uuid": "",
        "z_step_size": 3.0,
        "well_uuid": "",
        "calibration_uuid": "N/A",
        "images": {"morphology_filepath": FILES["morphology"]},
        "xenium_explorer_files": {
            "transcripts_zarr_filepath": FILES["transcripts"],
            "cells_zarr_filepath": FILES["cells"],
            "cell_features_zarr_filepath": FILES["matrix"],
            "analysis_zarr_filepath": FILES["analysis"],
        },
    }
