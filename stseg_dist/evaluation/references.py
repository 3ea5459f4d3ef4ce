"""Load a segmentation reference: a label mask, per-transcript reference IDs, or a chip's truth.

A reference is a small record of whatever is available; ``evaluate`` computes the metrics each
part allows, so a transcript-only reference still yields the per-transcript scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import constants as K
from ..errors import InputError
from ..io import storage


@dataclass
class Reference:
    """What a reference offers; any part may be None."""

    url: str
    labels: Any = None  # 2-D uint label array (zarr or numpy) on the prediction's grid
    transcripts: pd.DataFrame | None = None  # key column(s) + "ref_id"


def open_label_array(url: str, storage_options: dict | None = None):
    """Open a label mask lazily: a zarr array, a zarr group holding ``cells``, or a TIFF file."""
    low = url.lower()
    if low.endswith((".tif", ".tiff")):
        import tifffile

        try:
            return np.asarray(tifffile.imread(url))
        except FileNotFoundError as exc:
            raise InputError(f"reference mask not found: {url}") from exc
    import zarr

    try:
        kw = (
            {"storage_options": storage_options}
            if storage.is_remote(url) and storage_options
            else {}
        )
        node = zarr.open(url, mode="r", **kw)
    except (FileNotFoundError, Exception) as exc:  # zarr raises several kinds for a missing store
        raise InputError(f"cannot open reference mask {url}: {exc}") from exc
    if isinstance(node, zarr.Group):
        if K.LABELS_CELLS not in node:
            raise InputError(f"zarr group {url} has no '{K.LABELS_CELLS}' array")
        node = node[K.LABELS_CELLS]
    if node.ndim != 2:
        raise InputError(f"reference mask {url} must be 2-D, has shape {node.shape}")
    if not np.issubdtype(node.dtype, np.integer):
        raise InputError(f"reference mask {url} must hold integer labels, has dtype {node.dtype}")
    return node


def _read_parquet(url: str, columns=None, storage_options=None) -> pd.DataFrame:
    try:
        return pd.read_parquet(
            url, columns=columns, storage_options=storage.pandas_options(url, storage_options)
        )
    except FileNotFoundError as exc:
        raise InputError(f"reference table not found: {url}") from exc
    except (KeyError, ValueError) as exc:
        raise InputError(f"{url}: cannot read columns {columns}: {exc}") from exc


def transcript_reference(url: str, column: str = K.CELL_TRUE, storage_options=None) -> pd.DataFrame:
    """Per-transcript reference IDs from a parquet column, keyed by transcript_id (or row order)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(
            storage.fs_and_path(url, storage_options)[0].open(
                storage.fs_and_path(url, storage_options)[1]
            )
        ).names
    except FileNotFoundError as exc:
        raise InputError(f"reference table not found: {url}") from exc
    if column not in names:
        raise InputError(
            f"{url}: no column '{column}' with reference cell IDs (columns: {', '.join(names)})"
        )
    key = K.TRANSCRIPT_ID if K.TRANSCRIPT_ID in names else None
    df = _read_parquet(url, [c for c in (key, column) if c], storage_options)
    if not np.issubdtype(df[column].dtype, np.integer):
        raise InputError(
            f"{url}: column '{column}' must hold integer cell IDs, has {df[column].dtype}"
        )
    df = df.rename(columns={column: "ref_id"})
    if key is None:
        df[K.INPUT_ROW] = np.arange(len(df), dtype=np.int64)
    return df


def load_reference(url: str, storage_options: dict | None = None) -> Reference:
    """Resolve ``url`` into a Reference.

    Accepted: a generated chip folder (``truth/cells.zarr`` and a ``cell_true`` column), a zarr /
    TIFF label mask, or ``table.parquet`` / ``table.parquet#column`` with reference IDs per
    transcript (default column ``cell_true``).
    """
    path, _, column = url.partition("#")
    if path.rstrip("/").endswith(".parquet"):
        return Reference(
            url, transcripts=transcript_reference(path, column or K.CELL_TRUE, storage_options)
        )
    if path.lower().endswith((".tif", ".tiff")) or (
        path.rstrip("/").endswith(".zarr") and storage.exists(path, storage_options)
    ):
        return Reference(url, labels=open_label_array(path, storage_options))
    truth = storage.join(path, K.TRUTH_CELLS_ZARR)
    if storage.exists(truth, storage_options):
        ref = Reference(url, labels=open_label_array(truth, storage_options))
        tx = storage.join(path, K.TRANSCRIPTS_PARQUET)
        if storage.exists(tx, storage_options):
            try:
                ref.transcripts = transcript_reference(tx, K.CELL_TRUE, storage_options)
            except InputError:
                pass  # a truth mask without per-transcript truth still gives pixel metrics
        return ref
    raise InputError(
        f"reference {url} is neither a chip with {K.TRUTH_CELLS_ZARR}, a label mask (.zarr/.tif), "
        "nor a transcript table (.parquet[#column])"
    )
