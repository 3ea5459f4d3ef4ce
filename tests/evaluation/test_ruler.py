"""One MECR ruler per chip: runs with different nuclei are scored on the same gene pairs."""

import json

import numpy as np
import pandas as pd
import pytest

from stseg_dist.errors import InputError
from stseg_dist.evaluation import evaluate
from stseg_dist.evaluation.ruler import CACHE_JSON, chip_gene_pairs, load_pair_file

from .test_evaluate import _write_out


def _chip_transcripts(seed=0, n_cells=40):
    """Cells in a row, 10 µm apart: even cells express a and c, odd cells b and d, each with a
    few transcripts of every gene's partner type too little to matter, plus e everywhere.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_cells):
        genes = ["a", "c"] if k % 2 == 0 else ["b", "d"]
        for g in genes + ["e"]:
            for _ in range(6):
                rows.append((10.0 * k + 5 + rng.uniform(-1.5, 1.5), 5 + rng.uniform(-1.5, 1.5), g))
    t = pd.DataFrame(rows, columns=["x", "y", "gene"])
    t["cell"] = (t.x // 10).astype(np.int64) + 1
    return t


def _run(tmp_path, name, tx, cell_of, chip):
    out = tmp_path / name
    lab = np.zeros((10, 400), np.uint32)
    t = tx.assign(
        transcript_id=np.arange(len(tx)),
        input_row=np.arange(len(tx)),
        cell_id=cell_of,
        in_nucleus=cell_of > 0,
    )[["x", "y", "gene", "transcript_id", "input_row", "cell_id", "in_nucleus"]]
    for c in np.unique(cell_of[cell_of > 0]):
        lab[0, int(c) % 400] = c
    _write_out(out, lab, t)
    (out / "run.json").write_text(json.dumps({"chip": str(chip)}))
    return str(out)


@pytest.fixture
def chip(tmp_path):
    tx = _chip_transcripts()
    folder = tmp_path / "chip"
    folder.mkdir()
    tx[["x", "y", "gene"]].to_parquet(folder / "transcripts.parquet")
    return folder, tx


def test_runs_with_different_nuclei_get_the_same_pairs(chip, tmp_path):
    """The old rule (pairs exclusive in the run's own nuclei) gave each run its own ruler: the
    merging run's nuclei hold a and b together, so a/b was no pair for it.
    """
    folder, tx = chip
    good = tx.cell.to_numpy()
    merged = (good + 1) // 2  # neighbours of the two types share a "nucleus"
    a = evaluate(_run(tmp_path, "good", tx, good, folder))["reference_free"]
    b = evaluate(_run(tmp_path, "merged", tx, merged, folder))["reference_free"]
    assert a["gene_pairs"] == b["gene_pairs"] and ("a", "b") in a["gene_pairs"]
    assert a["gene_pair_source"]["source"] == "chip_bins"
    assert a["gene_pair_source"]["chip"] == str(folder)
    # same ruler, so the merging run measurably mixes more
    assert a["mecr"] == 0.0 and b["mecr"] == 1.0
    # the ruler is a function of the chip: cached beside it, and the cache is what is read
    cached = json.loads((folder / CACHE_JSON).read_text())
    assert [tuple(p) for p in cached["pairs"]] == a["gene_pairs"]
    cached["pairs"] = [["c", "d"]]
    (folder / CACHE_JSON).write_text(json.dumps(cached))
    assert chip_gene_pairs(str(folder)).pairs == [("c", "d")]
    # ...until the chip's transcripts change
    tx[["x", "y", "gene"]].iloc[:-1].to_parquet(folder / "transcripts.parquet")
    assert ("a", "b") in chip_gene_pairs(str(folder)).pairs


def test_vendor_nucleus_flags_decide_the_pairs_where_present(chip):
    """A chip whose transcripts carry the vendor's nuclei takes its pairs from them."""
    folder, tx = chip
    t = tx[["x", "y", "gene"]].assign(
        vendor_cell_id=[f"c{c}" for c in tx.cell], overlaps_nucleus=np.uint8(1)
    )
    t.to_parquet(folder / "transcripts.parquet")
    got = chip_gene_pairs(str(folder), cache=False)
    assert got.source == "vendor_nuclei" and got.detail["flag_column"] == "overlaps_nucleus"
    assert got.detail["n_nuclei"] == 40 and ("a", "b") in got.pairs
    # CosMx: the nucleus is CellComp == "Nuclear"; an all-cytoplasm chip has no vendor nuclei
    t = tx[["x", "y", "gene"]].assign(vendor_cell_label=tx.cell, CellComp="Cytoplasm")
    t.to_parquet(folder / "transcripts.parquet")
    assert chip_gene_pairs(str(folder), cache=False).source == "chip_bins"


def test_a_user_pair_file_is_the_ruler(chip, tmp_path):
    folder, tx = chip
    out = _run(tmp_path, "good", tx, tx.cell.to_numpy(), folder)
    pd.DataFrame({"gene_a": ["c", "zz"], "gene_b": ["d", "a"]}).to_csv(
        tmp_path / "pairs.csv", index=False
    )
    free = evaluate(out, pairs_file=str(tmp_path / "pairs.csv"))["reference_free"]
    assert free["gene_pairs"] == [("c", "d")]  # a gene the chip lacks drops its pair
    assert free["gene_pair_source"] == {
        "source": "file",
        "path": str(tmp_path / "pairs.csv"),
        "n_pairs": 2,
    }


def test_bad_pair_files_are_rejected(tmp_path):
    with pytest.raises(InputError, match="gene pair file not found: .*none.csv"):
        load_pair_file(str(tmp_path / "none.csv"))
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(InputError, match=r"cols.csv: .*missing \['gene_a', 'gene_b'\]"):
        load_pair_file(str(tmp_path / "cols.csv"))
    pd.DataFrame({"gene_a": [], "gene_b": []}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(InputError, match="empty.csv: the gene pair table is empty"):
        load_pair_file(str(tmp_path / "empty.csv"))


def test_genes_read_as_a_dictionary_give_the_same_pairs(chip):
    """The chip rule reads genes as a dictionary column (not one Python string per transcript,
    which at 60M transcripts is several GB): the pairs are the ones the string column gives,
    and gene names that are not strings are matched as strings.
    """
    from stseg_dist.evaluation.ruler import gene_categories, pairs_from_transcripts

    _, tx = chip
    as_text = pairs_from_transcripts(tx[["x", "y", "gene"]])
    as_dict = pairs_from_transcripts(tx[["x", "y", "gene"]].astype({"gene": "category"}))
    assert as_dict.pairs == as_text.pairs and as_text.pairs
    numbered = tx.gene.map({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5})
    cats = gene_categories(numbered.astype("category"))
    assert list(cats.categories) == ["1", "2", "3", "4", "5"]
    mixed = gene_categories(pd.Series([1, "1", "x"], dtype=object))
    assert sorted(mixed.categories) == ["1", "x"] and list(mixed.codes[:2]) == [0, 0]
