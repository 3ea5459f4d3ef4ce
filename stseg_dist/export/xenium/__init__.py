"""Xenium Explorer export: the files the Explorer opens from a folder (``experiment.xenium``).

The file layouts follow 10x's Xenium output specification as sopa's explorer writer documents
it (zarr v2 groups in zip stores, a pyramidal OME-TIFF); the code is this project's own. The
Explorer's coordinates are µm from the image's top-left corner, so every µm value of the run is
shifted by the chip origin, and the image's pixel size is the chip's.

- ``morphology.ome.tif``: the stain as uint8, one pyramid level per halving, tiled 1024 px;
- ``cells.zarr.zip``: cell and nucleus outlines (at most ``MAX_VERTICES`` vertices each);
- ``cell_feature_matrix.zarr.zip``: the cell x gene counts;
- ``analysis.zarr.zip``: a cell grouping (with or without a nucleus);
- ``transcripts.zarr.zip``: transcripts on a grid pyramid, with gene densities;
- ``experiment.xenium``: the manifest the Explorer opens.

An Explorer cell name ``xxxxxxxx-1`` encodes the run's ``cell_id`` (base 16, letters a-p).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import _run
from .cells import write_analysis, write_cells, write_matrix
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


def write_explorer(files: _run.RunFiles, path: Path) -> None:
    """Write every Explorer file of the run into the new folder ``path``."""
    import anndata as ad
    import pandas as pd

    from ... import constants as K

    path = Path(path)
    path.mkdir(parents=True)
    origin = files.origin_um
    cells = pd.read_parquet(files.path(K.CELLS_PARQUET))
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
    write_analysis(path / FILES["analysis"], cells)
    write_transcripts(
        path / FILES["transcripts"],
        files.path(K.TRANSCRIPTS_PARQUET),
        list(adata.var_names),
        origin,
    )
    write_morphology(path / FILES["morphology"], files.chip, path / ".pyramid")
    manifest = experiment(files, len(cells))
    (path / EXPERIMENT).write_text(json.dumps(manifest, indent=2))


def experiment(files: _run.RunFiles, n_cells: int) -> dict:
    name = Path(str(files.run.get("chip", files.root))).name or "stseg"
    return {
        "major_version": 6,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": name,
        "region_name": files.root.name,
        "experiment_uuid": "N/A",
        "panel_tissue_type": "N/A",
        "run_start_time": files.run.get("started", "N/A"),
        "preservation_method": "N/A",
        "num_cells": int(n_cells),
        "transcripts_per_cell": 0,
        "transcripts_per_100um": 0,
        "cassette_name": "N/A",
        "slide_id": "N/A",
        "panel_design_id": "N/A",
        "panel_name": "N/A",
        "panel_organism": "N/A",
        "panel_num_targets_predesigned": 0,
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
