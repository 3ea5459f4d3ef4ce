"""One MECR ruler per chip: the marker gene pairs, chosen from the chip, never from a run.

MECR (mutually exclusive co-expression rate) is only comparable between segmentations scored on
the same gene pairs. Pairs found in a run's own nuclei change whenever the nuclei do, so two runs
on one chip would be measured with two rulers. Here the pairs are a function of the chip alone:

- ``file``: a pair table the user gives (columns ``gene_a``, ``gene_b``);
- ``vendor_nuclei``: genes that rarely share a vendor nucleus, where the chip's transcripts say
  which vendor cell holds them and whether they lie in its nucleus (Xenium ``overlaps_nucleus``,
  CosMx ``CellComp == "Nuclear"``): the instrument's nuclei are the compartment least mixed with
  neighbours and independent of every method;
- ``chip_bins``: otherwise genes that rarely share a square bin of ``BIN_UM`` of the whole chip
  (smaller than nearly any cell, so most bins sample one cell).

The result is cached beside the chip (``mecr_pairs.json``, keyed by the transcript table's size
and the rule's parameters) and recorded with its provenance in the eval output.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .. import constants as K
from ..errors import InputError
from ..io import storage
from . import metrics as M

log = logging.getLogger(__name__)

#: Side of the chip-wide bins that stand in for nuclei where the chip has no vendor nuclei.
BIN_UM = 4.0
CACHE_JSON = "mecr_pairs.json"
#: (vendor cell column, nucleus flag column, value that means "in the nucleus")
VENDOR_NUCLEUS_FLAGS = (
    ("vendor_cell_id", "overlaps_nucleus", 1),
    ("vendor_cell_label", "overlaps_nucleus", 1),
    ("vendor_cell_label", "CellComp", "Nuclear"),
)
_NO_CELL = ("", "0", "-1", "UNASSIGNED", "None", "nan")


@dataclass
class PairSet:
    """MECR's gene pairs (by name) and where they came from."""

    pairs: list[tuple[str, str]]
    source: str  # file | vendor_nuclei | chip_bins | names | markers
    detail: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        return {"source": self.source, **self.detail, "n_pairs": len(self.pairs)}

    def codes(self, categories) -> list[tuple[int, int]]:
        """The pairs as codes of ``categories``; pairs naming a gene not among them are dropped."""
        index = {g: i for i, g in enumerate(categories)}
        return [(index[a], index[b]) for a, b in self.pairs if a in index and b in index]


def load_pair_file(path: str) -> PairSet:
    """A user's pair table (CSV/TSV/parquet with columns gene_a, gene_b)."""
    import fsspec

    try:
        if path.endswith(".parquet"):
            table = pd.read_parquet(path)
        else:
            with fsspec.open(path, "r") as fh:
                table = pd.read_csv(fh, sep=None, engine="python")
    except FileNotFoundError as exc:
        raise InputError(f"gene pair file not found: {path}") from exc
    missing = {"gene_a", "gene_b"} - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: a gene pair table needs columns gene_a and gene_b; missing {sorted(missing)}"
        )
    if table.empty:
        raise InputError(f"{path}: the gene pair table is empty")
    pairs = [(str(a), str(b)) for a, b in zip(table.gene_a, table.gene_b, strict=True)]
    return PairSet(pairs, "file", {"path": path})


def _vendor_nuclei(t: pd.DataFrame) -> tuple[np.ndarray, dict] | None:
    """Per transcript: its vendor nucleus (a positive ID) or 0, from the chip's vendor flags."""
    for cell_col, flag_col, inside in VENDOR_NUCLEUS_FLAGS:
        if cell_col in t and flag_col in t:
            cells = t[cell_col]
            if pd.api.types.is_integer_dtype(cells):
                ids = cells.to_numpy(np.int64)
                ids = np.where(ids > 0, ids, 0)
            else:
                s = cells.astype(str)
                ids = np.where(s.isin(_NO_CELL), 0, pd.factorize(s)[0] + 1)
            flag = t[flag_col]
            is_in = (flag.astype(str) == inside) if isinstance(inside, str) else (flag == inside)
            nuclei = np.where(is_in.to_numpy(), ids, 0)
            if (nuclei > 0).any():
                return nuclei, {"cell_column": cell_col, "flag_column": flag_col}
    return None


def gene_categories(genes: pd.Series) -> pd.Categorical:
    """Genes as a categorical with string names; a column read as a dictionary stays one, so a
    whole slide's genes never become one Python string per transcript.
    """
    cat = pd.Categorical(genes)
    names = [str(c) for c in cat.categories]
    if len(set(names)) < len(names):  # e.g. 1 and "1" in one column
        return pd.Categorical(np.asarray(genes).astype(str))
    return cat.rename_categories(names)


def pairs_from_transcripts(t: pd.DataFrame, bin_um: float = BIN_UM) -> PairSet:
    """The chip rule on a transcript table (columns x, y, gene, and any vendor flags)."""
    genes = gene_categories(t[K.GENE])
    codes = genes.codes.astype(np.int64)
    vendor = _vendor_nuclei(t)
    if vendor is not None:
        groups, detail = vendor
        source = "vendor_nuclei"
        detail["n_nuclei"] = len(np.unique(groups[groups > 0]))
    else:
        bx = np.floor(t[K.X].to_numpy(float) / bin_um).astype(np.int64)
        by = np.floor(t[K.Y].to_numpy(float) / bin_um).astype(np.int64)
        groups = pd.factorize(pd.Series(by * (1 << 32) + bx))[0] + 1
        source, detail = "chip_bins", {"bin_um": bin_um}
    pairs = M.exclusive_gene_pairs(groups, codes)
    cats = genes.categories
    return PairSet([(str(cats[a]), str(cats[b])) for a, b in pairs], source, detail)


def _columns(url: str, so) -> list[str]:
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(url, so)
    with fs.open(path) as fh:
        return pq.read_schema(fh).names


def chip_gene_pairs(
    chip_url: str, storage_options: dict | None = None, *, cache: bool = True
) -> PairSet:
    """MECR's pairs for the chip at ``chip_url`` (see the module doc), cached beside it."""
    so = storage_options
    tx_url = storage.join(chip_url, K.TRANSCRIPTS_PARQUET)
    if not storage.exists(tx_url, so):
        raise InputError(f"chip has no {K.TRANSCRIPTS_PARQUET}: {tx_url}")
    fs, path = storage.fs_and_path(tx_url, so)
    key = {"transcripts_bytes": int(fs.size(path)), "bin_um": BIN_UM, "rule": 1}
    cache_url = storage.join(chip_url, CACHE_JSON)
    if cache and storage.exists(cache_url, so):
        try:
            got = storage.read_json(cache_url, so)
            if got.get("key") == key:
                return PairSet([tuple(p) for p in got["pairs"]], got["source"], got["detail"])
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a damaged cache is recomputed
    names = _columns(tx_url, so)
    wanted = [K.X, K.Y, K.GENE] + sorted(
        {c for cell, flag, _ in VENDOR_NUCLEUS_FLAGS for c in (cell, flag) if c in names}
    )
    t = pd.read_parquet(
        tx_url,
        columns=wanted,
        read_dictionary=[K.GENE],
        storage_options=storage.pandas_options(tx_url, so),
    )
    found = pairs_from_transcripts(t)
    found.detail = {"chip": chip_url, **found.detail}
    if cache:
        try:
            storage.write_json_atomic(cache_url, {"key": key, **asdict(found)}, so)
        except Exception as exc:  # noqa: BLE001 - a read-only chip (local or object store)
            log.info(f"MECR pairs not cached beside {chip_url}: {exc}")
    return found


def save_pairs(pairs: PairSet, path: str) -> None:
    """Write a pair table that ``load_pair_file`` reads back (to fix one ruler across chips)."""
    pd.DataFrame(pairs.pairs, columns=["gene_a", "gene_b"]).to_csv(path, index=False)
