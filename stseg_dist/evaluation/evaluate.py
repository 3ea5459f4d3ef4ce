"""``stseg eval``: score a run's outputs against a reference and print them as a table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import constants as K
from ..errors import InputError
from ..io import storage
from . import metrics as M
from .references import load_reference, open_label_array


def _pred_transcripts(pred_out_url: str, key: str, so) -> pd.DataFrame:
    url = storage.join(pred_out_url, K.TRANSCRIPTS_PARQUET)
    if not storage.exists(url, so):
        raise InputError(f"prediction has no {K.TRANSCRIPTS_PARQUET}: {url}")
    cols = [key, K.CELL_ID, K.IN_NUCLEUS, K.X, K.Y, K.GENE]
    try:
        return pd.read_parquet(url, columns=cols, storage_options=storage.pandas_options(url, so))
    except (KeyError, ValueError) as exc:
        raise InputError(f"{url}: needs columns {cols}: {exc}") from exc


def evaluate(
    pred_out_url: str,
    ref_url: str | None = None,
    *,
    storage_options: dict | None = None,
    deltas=(3, 5, 7),
    block: int = 2048,
    expression_ref: str | None = None,
    gene_pairs: list[tuple[str, str]] | None = None,
    markers: str | None = None,
) -> dict:
    """Score the run in ``pred_out_url``; with ``ref_url``, also against the reference.

    Always: baseline characteristics (coverage, area, transcripts/genes per cell, density),
    cell calling score and morphology of the predicted mask. With a label reference: pixel and
    instance metrics. With per-transcript reference IDs: ARI, fraction correct, purity. Label
    arrays are read block by block (``block`` px) so whole chips fit in memory. With a generated
    chip (``truth/cells.parquet`` has ``cell_type``): expression consistency, Pearson r of each
    cell type's mean profile in the prediction (a predicted cell takes the type of its majority
    true cell) with ``expression_ref`` (a types x genes table, parquet or csv, first column the
    type) or, without one, with the true cells' mean profiles.

    Reference-free, so a user with no reference can judge a segmentation (``reference_free``):
    MECR over gene pairs that mark different cell types (``gene_pairs`` by name, else pairs of
    ``markers`` of different types, else pairs found exclusive in this run's nuclei), the median
    nucleus-cytoplasm profile correlation and the share of transcripts assigned. With
    per-transcript reference IDs the reference's own MECR on the same pairs is given too.
    """
    so = storage_options
    labels_url = storage.join(pred_out_url, K.LABELS_ZARR)
    if not storage.exists(labels_url, so):
        raise InputError(f"prediction has no {K.LABELS_ZARR}: {labels_url}")
    pred_labels = open_label_array(labels_url, so)
    attrs = dict(pred_labels.attrs) if hasattr(pred_labels, "attrs") else {}
    px = float(attrs.get("pixel_size_um", 1.0))
    ox, oy = attrs.get("origin_um", (0.0, 0.0))
    cells_url = storage.join(pred_out_url, K.CELLS_PARQUET)
    if not storage.exists(cells_url, so):
        raise InputError(f"prediction has no {K.CELLS_PARQUET}: {cells_url}")
    cells = pd.read_parquet(cells_url, storage_options=storage.pandas_options(cells_url, so))

    ref = load_reference(ref_url, so) if ref_url else None
    key = (
        K.TRANSCRIPT_ID
        if ref is not None and ref.transcripts is not None and K.TRANSCRIPT_ID in ref.transcripts
        else K.INPUT_ROW
    )
    tx = _pred_transcripts(pred_out_url, key, so)

    result: dict = {"pred": pred_out_url, "ref": ref_url}
    result["baseline"] = M.baseline_metrics(cells, len(tx))
    rows = np.floor((tx[K.Y].to_numpy() - oy) / px).astype(np.int64)
    cols = np.floor((tx[K.X].to_numpy() - ox) / px).astype(np.int64)
    result["cell_calling"] = M.cell_calling_score(pred_labels, rows, cols, deltas, block)
    result["morphology"] = M.morphology_metrics(pred_labels, block)
    result["reference_free"], codes, pairs = _reference_free(tx, gene_pairs, markers)
    if ref is not None and ref.labels is not None:
        table = M.contingency(pred_labels, ref.labels, block)
        result["pixel"] = M.pixel_metrics(table)
        result["instance"] = M.instance_metrics(table)
    if ref is not None and ref.transcripts is not None:
        joined = tx[[key, K.CELL_ID, K.GENE]].merge(
            ref.transcripts, on=key, how="left", validate="one_to_one"
        )
        missing = int(joined["ref_id"].isna().sum())
        if missing:
            raise InputError(
                f"{missing} predicted transcripts have no reference ID in {ref_url} (joined on {key})"
            )
        result["transcripts"] = M.transcript_metrics(
            joined[K.CELL_ID].to_numpy(), joined["ref_id"].to_numpy()
        )
        ref_ids = joined["ref_id"].to_numpy().astype(np.int64)  # a left merge keeps tx's order
        result["reference_free"]["ref_mecr"] = M.mecr(ref_ids, codes, pairs)["mecr"]
        result["reference_free"]["ref_assigned_share"] = float((ref_ids > 0).mean())
        result["petukhov"] = M.petukhov_correlation(
            joined[K.GENE].to_numpy(), joined[K.CELL_ID].to_numpy(), joined["ref_id"].to_numpy()
        )
        types = _truth_types(ref_url, so)
        if types is not None:
            result["expression"] = _expression(joined, types, expression_ref)
    return result


def reference_free(
    pred_out_url: str,
    *,
    storage_options: dict | None = None,
    gene_pairs=None,
    markers: str | None = None,
) -> dict:
    """MECR, nucleus-cytoplasm r and assigned share of a run, with no reference (see evaluate)."""
    url = storage.join(pred_out_url, K.TRANSCRIPTS_PARQUET)
    if not storage.exists(url, storage_options):
        raise InputError(f"prediction has no {K.TRANSCRIPTS_PARQUET}: {url}")
    tx = pd.read_parquet(
        url,
        columns=[K.CELL_ID, K.IN_NUCLEUS, K.GENE],
        storage_options=storage.pandas_options(url, storage_options),
    )
    return _reference_free(tx, gene_pairs, markers)[0]


def _reference_free(tx: pd.DataFrame, gene_pairs, markers) -> tuple[dict, np.ndarray, list]:
    genes = pd.Categorical(tx[K.GENE])
    codes = genes.codes.astype(np.int64)
    pairs = _pairs(gene_pairs, markers, list(genes.categories), tx, codes)
    cells = tx[K.CELL_ID].to_numpy()
    out = {
        **M.mecr(cells, codes, pairs),
        "nucleus_cytoplasm_r": M.nucleus_cytoplasm_r(cells, tx[K.IN_NUCLEUS].to_numpy(), codes)[
            "median_r"
        ],
        "assigned_share": float((cells > 0).mean()) if len(tx) else 0.0,
        "gene_pairs": [(str(genes.categories[a]), str(genes.categories[b])) for a, b in pairs],
    }
    return out, codes, pairs


def _pairs(
    names, markers, categories: list[str], tx: pd.DataFrame, codes: np.ndarray
) -> list[tuple[int, int]]:
    """MECR gene pairs as codes of ``categories``: given by name, from a marker table, or found in the nuclei."""
    index = {g: i for i, g in enumerate(categories)}
    if names is not None:
        return [(index[a], index[b]) for a, b in names if a in index and b in index]
    if markers:
        from ..methods.ucs.method import load_markers

        return M.marker_gene_pairs(load_markers(markers, "--markers"), index)
    nuclei = np.where(tx[K.IN_NUCLEUS].to_numpy(), tx[K.CELL_ID].to_numpy(), 0)
    return M.exclusive_gene_pairs(nuclei, codes)


def _truth_types(ref_url: str, so) -> pd.Series | None:
    url = storage.join(ref_url.partition("#")[0], "truth", K.CELLS_PARQUET)
    if not storage.exists(url, so):
        return None
    t = pd.read_parquet(url, storage_options=storage.pandas_options(url, so))
    return t.set_index(K.CELL_ID)["cell_type"] if "cell_type" in t else None


def _type_means(tx: pd.DataFrame, cell_col: str, cell_type: pd.Series) -> pd.DataFrame:
    """Types x genes mean counts per cell, from per-transcript rows (never a cells x genes matrix)."""
    tx = tx[tx[cell_col] > 0]
    typ = tx[cell_col].map(cell_type)
    sums = tx.groupby([typ, tx[K.GENE]], observed=True).size().unstack(fill_value=0)
    n_cells = tx.groupby(typ)[cell_col].nunique()
    return sums.div(n_cells, axis=0)


def _read_table(url: str) -> pd.DataFrame:
    try:
        t = pd.read_csv(url) if url.endswith((".csv", ".tsv")) else pd.read_parquet(url)
    except FileNotFoundError as exc:
        raise InputError(f"expression reference not found: {url}") from exc
    return t.set_index(t.columns[0])


def _expression(joined: pd.DataFrame, true_type: pd.Series, expression_ref: str | None) -> dict:
    inside = joined[joined[K.CELL_ID] > 0]
    counts = (
        inside[inside.ref_id > 0].groupby([K.CELL_ID, "ref_id"]).size().rename("n").reset_index()
    )
    major = counts.sort_values([K.CELL_ID, "n"], ascending=[True, False]).drop_duplicates(K.CELL_ID)
    pred_type = major.set_index(K.CELL_ID)["ref_id"].map(true_type)
    pred_means = _type_means(joined, K.CELL_ID, pred_type)
    if expression_ref:
        reference = _read_table(expression_ref)
    else:
        reference = _type_means(joined, "ref_id", true_type)
    pred_means.index = pred_means.index.map(str)
    reference.index = reference.index.map(str)
    return M.mean_profile_correlation(pred_means, reference)


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
