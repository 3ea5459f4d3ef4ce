"""``stseg eval``: score a run's outputs against a reference and print them as a table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import constants as C
from ..errors import InputError
from ..io import storage
from . import metrics as M
from .references import load_reference, open_label_array


def _pred_transcripts(pred_out_url: str, key: str, so) -> pd.DataFrame:
    url = storage.join(pred_out_url, C.TRANSCRIPTS_PARQUET)
    if not storage.exists(url, so):
        raise InputError(f"prediction has no {C.TRANSCRIPTS_PARQUET}: {url}")
    cols = [key, C.CELL_ID, C.X, C.Y, C.GENE]
    try:
        return pd.read_parquet(url, columns=cols, storage_options=so or None)
    except (KeyError, ValueError) as exc:
        raise InputError(f"{url}: needs columns {cols}: {exc}") from exc


def evaluate(pred_out_url: str, ref_url: str | None = None, *, storage_options: dict | None = None,
             deltas=(3, 5, 7), block: int = 2048) -> dict:
    """Score the run in ``pred_out_url``; with ``ref_url``, also against the reference.

    Always: baseline characteristics (coverage, area, transcripts/genes per cell, density),
    cell calling score and morphology of the predicted mask. With a label reference: pixel and
    instance metrics. With per-transcript reference IDs: ARI, fraction correct, purity. Label
    arrays are read block by block (``block`` px) so whole chips fit in memory.
    """
    so = storage_options
    labels_url = storage.join(pred_out_url, C.LABELS_ZARR)
    if not storage.exists(labels_url, so):
        raise InputError(f"prediction has no {C.LABELS_ZARR}: {labels_url}")
    pred_labels = open_label_array(labels_url, so)
    attrs = dict(pred_labels.attrs) if hasattr(pred_labels, "attrs") else {}
    px = float(attrs.get("pixel_size_um", 1.0))
    ox, oy = attrs.get("origin_um", (0.0, 0.0))
    cells_url = storage.join(pred_out_url, C.CELLS_PARQUET)
    if not storage.exists(cells_url, so):
        raise InputError(f"prediction has no {C.CELLS_PARQUET}: {cells_url}")
    cells = pd.read_parquet(cells_url, storage_options=so or None)

    ref = load_reference(ref_url, so) if ref_url else None
    key = C.TRANSCRIPT_ID if ref is not None and ref.transcripts is not None and C.TRANSCRIPT_ID in ref.transcripts else C.INPUT_ROW
    tx = _pred_transcripts(pred_out_url, key, so)

    result: dict = {"pred": pred_out_url, "ref": ref_url}
    result["baseline"] = M.baseline_metrics(cells, len(tx))
    rows = np.floor((tx[C.Y].to_numpy() - oy) / px).astype(np.int64)
    cols = np.floor((tx[C.X].to_numpy() - ox) / px).astype(np.int64)
    result["cell_calling"] = M.cell_calling_score(pred_labels, rows, cols, deltas, block)
    result["morphology"] = M.morphology_metrics(pred_labels, block)
    if ref is not None and ref.labels is not None:
        table = M.contingency(pred_labels, ref.labels, block)
        result["pixel"] = M.pixel_metrics(table)
        result["instance"] = M.instance_metrics(table)
    if ref is not None and ref.transcripts is not None:
        joined = tx[[key, C.CELL_ID, C.GENE]].merge(ref.transcripts, on=key, how="left", validate="one_to_one")
        missing = int(joined["ref_id"].isna().sum())
        if missing:
            raise InputError(f"{missing} predicted transcripts have no reference ID in {ref_url} (joined on {key})")
        result["transcripts"] = M.transcript_metrics(joined[C.CELL_ID].to_numpy(), joined["ref_id"].to_numpy())
        result["petukhov"] = M.petukhov_correlation(
            joined[C.GENE].to_numpy(), joined[C.CELL_ID].to_numpy(), joined["ref_id"].to_numpy())
    return result


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, name + "."))
        else:
            out.append((name, v))
    return out


def format_table(metrics: dict) -> str:
    """Two-column text table of every metric, for the terminal."""
    rows = []
    for name, v in _flatten(metrics):
        if isinstance(v, float):
            s = "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4f}")
        else:
            s = str(v)
        rows.append((name, s))
    width = max((len(n) for n, _ in rows), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{n:<{width}}  {s}" for n, s in rows]
    return "\n".join(lines)
