"""One home for file, column and array names, so readers, stages and outputs agree."""

# Canonical chip layout (a folder or an fsspec prefix).
CHIP_JSON = "chip.json"
IMAGE_ZARR = "image.zarr"
TRANSCRIPTS_PARQUET = "transcripts.parquet"
NUCLEI_ZARR = "nuclei.zarr"
TRUTH_DIR = "truth"
TRUTH_CELLS_ZARR = "truth/cells.zarr"
TRUTH_NUCLEI_ZARR = "truth/nuclei.zarr"

# Transcript columns.
X = "x"
Y = "y"
Z = "z"
GENE = "gene"
QV = "qv"
TRANSCRIPT_ID = "transcript_id"
CELL_TRUE = "cell_true"
CELL_ID = "cell_id"
INPUT_ROW = "input_row"  # position in the input table; restores input order, always unique
IN_NUCLEUS = "in_nucleus"
SPILLOVER_MOVED = "spillover_moved"  # written only with cells.spillover: moved by that pass
REQUIRED_TRANSCRIPT_COLUMNS = (X, Y, GENE)

# Run outputs.
LABELS_ZARR = "labels.zarr"
LABELS_CELLS = "cells"
LABELS_NUCLEI = "nuclei"
CELLS_PARQUET = "cells.parquet"
CELLS_H5AD = "cells.h5ad"
# In a chip, written by readers whose bundle lists its features: gene, gene_id, feature_type
FEATURES_PARQUET = "features.parquet"
CELL_BOUNDARIES_PARQUET = "cell_boundaries.parquet"  # GeoParquet: cell_id + geometry (µm)
NUCLEUS_BOUNDARIES_PARQUET = "nucleus_boundaries.parquet"
RUN_JSON = "run.json"
REPORT_HTML = "report.html"
WORK_DIR = "_work"

# cells.parquet columns.
CELL_COLUMNS = (
    CELL_ID,
    X,
    Y,
    "area_um2",
    "nucleus_area_um2",
    "n_transcripts",
    "n_genes",
    "has_nucleus",
)

# Label arrays hold global IDs; 0 is background.
LABEL_DTYPE = "uint32"
