"""``stseg eval``: score a run's outputs against a reference and print them as a table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import constants as K
from ..errors import InputError
from ..io import storage
from . import metrics as M
from . import nuclei as NM
from .references import (
    NUCLEUS_FLAG_COLUMNS,
    Grid,
    chip_nucleus_reference,
    load_nucleus_reference,
    load_reference,
    nucleus_flags,
    open_label_array,
)
from .ruler import (
    PairSet,
    chip_gene_pairs,
    gene_categories,
    load_pair_file,
    pairs_from_transcripts,
)


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
    nuclei_ref: str | None = None,
    pairs_file: str | None = None,
    chip: str | None = None,
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
    MECR over gene pairs that mark different cell types, the median nucleus-cytoplasm profile
    correlation and the share of transcripts assigned. The pairs are one ruler per chip, never
    the run's own (see ruler.py): ``gene_pairs`` by name, else ``pairs_file``, else pairs of
    ``markers`` of different types, else the chip's pairs (``chip``, default the chip named in
    the run's run.json); ``gene_pair_source`` records which. With per-transcript reference IDs
    the reference's own MECR on the same pairs is given too.

    Nuclei (``nuclei``, see :func:`nucleus_section`): the run's nuclei against ``nuclei_ref``
    (see :func:`~stseg_dist.evaluation.references.load_nucleus_reference`), else against the
    nuclei that ``ref_url`` or the run's own chip carries; and "transcript lies in a nucleus"
    against the vendor's per-transcript flags the run's transcripts carry (``overlaps_nucleus``,
    ``CellComp``). A reference on another grid or frame is refused before anything is computed.
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
    grid = Grid(tuple(pred_labels.shape), px, (float(ox), float(oy)), labels_url)
    nuc_ref = _nucleus_reference(pred_out_url, ref_url, nuclei_ref, grid, so)
    key = (
        K.TRANSCRIPT_ID
        if ref is not None and ref.transcripts is not None and K.TRANSCRIPT_ID in ref.transcripts
        else K.INPUT_ROW
    )
    tx = _pred_transcripts(pred_out_url, key, so)

    result: dict = {"pred": pred_out_url, "ref": ref_url}
    nuclei = _nucleus_metrics(pred_out_url, nuc_ref, tx, block, so)
    if nuclei:
        result["nuclei"] = nuclei
    result["baseline"] = M.baseline_metrics(cells, len(tx))
    rows = np.floor((tx[K.Y].to_numpy() - oy) / px).astype(np.int64)
    cols = np.floor((tx[K.X].to_numpy() - ox) / px).astype(np.int64)
    result["cell_calling"] = M.cell_calling_score(pred_labels, rows, cols, deltas, block)
    result["morphology"] = M.morphology_metrics(pred_labels, block)
    ruler = gene_pair_set(pred_out_url, so, gene_pairs, markers, pairs_file, chip)
    result["reference_free"], codes, pairs = _reference_free(tx, ruler)
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
                f"{missing} predicted transcripts have no reference ID in {ref_url} (joined on "
                f"{key})"
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


def _nucleus_reference(pred_out_url, ref_url, nuclei_ref, grid: Grid, so):
    """The nucleus reference asked for, else the one ``ref_url`` or the run's chip carries."""
    if nuclei_ref:
        return load_nucleus_reference(nuclei_ref, grid, so)
    if ref_url:
        found = chip_nucleus_reference(ref_url.partition("#")[0], grid, so)
        if found is not None:
            return found
    run_json = storage.join(pred_out_url, K.RUN_JSON)
    chip = storage.read_json(run_json, so).get("chip") if storage.exists(run_json, so) else None
    try:
        return chip_nucleus_reference(chip, grid, so) if isinstance(chip, str) else None
    except InputError:
        return None  # the run's own chip moved or changed: no automatic reference


def _flag_column(url: str, so) -> str | None:
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(url, so)
    with fs.open(path, "rb") as fh:
        names = pq.read_schema(fh).names
    return next((c for c in NUCLEUS_FLAG_COLUMNS if c in names), None)


def _nucleus_metrics(pred_out_url: str, nuc_ref, tx: pd.DataFrame, block: int, so) -> dict:
    """Object scores of the run's nuclei and per-transcript agreement, where references exist."""
    out: dict = {}
    if nuc_ref is not None and nuc_ref.labels is not None:
        labels = open_label_array(storage.join(pred_out_url, K.LABELS_ZARR, K.LABELS_NUCLEI), so)
        out = {"reference": nuc_ref.url, "reference_kind": nuc_ref.kind}
        out.update(NM.nucleus_metrics(labels, nuc_ref.labels, block=block))
    pred_in = tx[K.IN_NUCLEUS].to_numpy().astype(bool)
    if nuc_ref is not None and nuc_ref.flags is not None:
        key = K.TRANSCRIPT_ID if K.TRANSCRIPT_ID in nuc_ref.flags else K.INPUT_ROW
        if key not in tx:
            tx = tx.assign(**{key: _run_column(pred_out_url, key, so)})
        joined = tx[[key]].merge(nuc_ref.flags, on=key, how="left", validate="one_to_one")
        missing = int(joined["ref_in_nucleus"].isna().sum())
        if missing:
            raise InputError(
                f"{missing} of the run's {len(tx)} transcripts have no nucleus flag in "
                f"{nuc_ref.url} (joined on {key}): not the run's transcripts"
            )
        out["flags_reference"] = nuc_ref.url
        out.update(NM.transcript_nucleus_agreement(pred_in, joined["ref_in_nucleus"].to_numpy()))
        return out
    url = storage.join(pred_out_url, K.TRANSCRIPTS_PARQUET)
    col = _flag_column(url, so)
    if col is not None:
        flags = pd.read_parquet(
            url, columns=[col], storage_options=storage.pandas_options(url, so)
        )[col]
        out["flags_reference"] = f"{col} per transcript"
        out.update(NM.transcript_nucleus_agreement(pred_in, nucleus_flags(flags, col)))
    return out


def _run_column(pred_out_url: str, column: str, so) -> np.ndarray:
    url = storage.join(pred_out_url, K.TRANSCRIPTS_PARQUET)
    try:
        return pd.read_parquet(
            url, columns=[column], storage_options=storage.pandas_options(url, so)
        )[column].to_numpy()
    except (KeyError, ValueError) as exc:
        raise InputError(f"{url}: no column '{column}' to join nucleus flags on") from exc


def nucleus_section(metrics: dict) -> dict:
    """The nucleus figures of an ``evaluate`` result, named for people (empty without any).

    For the report and the CLI: one small dict, so each can lay it out as it likes.
    """
    m = metrics.get("nuclei") or {}
    names = {
        "reference": "reference nuclei",
        "reference_kind": "reference kind",
        "n_pred": "nuclei (run)",
        "n_ref": "nuclei (reference)",
        "containment_f1": "containment F1",
        "containment_precision": "containment precision",
        "containment_recall": "containment recall",
        "iou50_f1": "IoU>=0.5 F1",
        "missed": "missed reference nuclei",
        "merged": "run nuclei covering 2+ reference nuclei",
        "split": "reference nuclei split in 2+",
        "flags_reference": "per-transcript reference",
        "transcript_precision": "in-nucleus transcripts: precision",
        "transcript_recall": "in-nucleus transcripts: recall",
    }
    return {label: m[k] for k, label in names.items() if k in m}


def reference_free(
    pred_out_url: str,
    *,
    storage_options: dict | None = None,
    gene_pairs=None,
    markers: str | None = None,
    pairs_file: str | None = None,
    chip: str | None = None,
) -> dict:
    """MECR, nucleus-cytoplasm r and assigned share of a run, with no reference (see evaluate)."""
    url = storage.join(pred_out_url, K.TRANSCRIPTS_PARQUET)
    if not storage.exists(url, storage_options):
        raise InputError(f"prediction has no {K.TRANSCRIPTS_PARQUET}: {url}")
    tx = pd.read_parquet(
        url,
        columns=[K.CELL_ID, K.IN_NUCLEUS, K.GENE],
        read_dictionary=[K.GENE],
        storage_options=storage.pandas_options(url, storage_options),
    )
    ruler = gene_pair_set(pred_out_url, storage_options, gene_pairs, markers, pairs_file, chip)
    return _reference_free(tx, ruler)[0]


def _reference_free(tx: pd.DataFrame, ruler: PairSet) -> tuple[dict, np.ndarray, list]:
    genes = gene_categories(tx[K.GENE])
    codes = genes.codes.astype(np.int64)
    pairs = ruler.codes(list(genes.categories))
    cells = tx[K.CELL_ID].to_numpy()
    out = {
        **M.mecr(cells, codes, pairs),
        "nucleus_cytoplasm_r": M.nucleus_cytoplasm_r(cells, tx[K.IN_NUCLEUS].to_numpy(), codes)[
            "median_r"
        ],
        "assigned_share": float((cells > 0).mean()) if len(tx) else 0.0,
        "gene_pairs": [(str(genes.categories[a]), str(genes.categories[b])) for a, b in pairs],
        "gene_pair_source": ruler.provenance(),
    }
    return out, codes, pairs


def run_chip(pred_out_url: str, so=None) -> str | None:
    """The chip a run read, as its run.json names it (None if it names none)."""
    url = storage.join(pred_out_url, K.RUN_JSON)
    if not storage.exists(url, so):
        return None
    return storage.read_json(url, so).get("chip")


def gene_pair_set(
    pred_out_url: str, so=None, names=None, markers=None, pairs_file=None, chip=None
) -> PairSet:
    """MECR's ruler for a run: given by name, a pair file, a marker table, or the chip's own."""
    if names is not None:
        return PairSet([(str(a), str(b)) for a, b in names], "names")
    if pairs_file:
        return load_pair_file(pairs_file)
    if markers:
        from ..methods.ucs.method import load_markers

        table = load_markers(markers, "--markers")
        genes = sorted(set(table.gene))
        index = {g: i for i, g in enumerate(genes)}
        pairs = [(genes[a], genes[b]) for a, b in M.marker_gene_pairs(table, index)]
        return PairSet(pairs, "markers", {"path": markers})
    chip = chip or run_chip(pred_out_url, so)
    if chip is not None and storage.exists(storage.join(chip, K.TRANSCRIPTS_PARQUET), so):
        return chip_gene_pairs(chip, so)
    # No chip to read: the same rule over the run's transcript table (all of the chip's
    # transcripts that the run kept; still nothing of the run's nuclei or cells).
    url = storage.join(pred_out_url, K.TRANSCRIPTS_PARQUET)
    tx = pd.read_parquet(
        url,
        columns=[K.X, K.Y, K.GENE],
        read_dictionary=[K.GENE],
        storage_options=storage.pandas_options(url, so),
    )
    found = pairs_from_transcripts(tx)
    found.detail = {"transcripts": url, "chip_unreadable": chip, **found.detail}
    return found


def _truth_types(ref_url: str, so) -> pd.Series | None:
    url = storage.join(ref_url.partition("#")[0], "truth", K.CELLS_PARQUET)
    if not storage.exists(url, so):
        return None
    t = pd.read_parquet(url, storage_options=storage.pandas_options(url, so))
    return t.set_index(K.CELL_ID)["cell_type"] if "cell_type" in t else None


def _type_means(tx: pd.DataFrame, cell_col: str, cell_type: pd.Series) -> pd.DataFrame:
    """Types x genes mean counts per cell, from per-transcript rows
    (never a cells x genes matrix).
    """
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
