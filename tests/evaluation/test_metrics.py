"""Metrics reproduce hand-computed values on small constructed cases."""

import numpy as np
import pandas as pd
import pytest
import zarr

from stseg_dist.errors import InputError
from stseg_dist.evaluation import metrics as M


def _two_squares():
    ref = np.zeros((10, 10), np.uint32)
    ref[0:4, 0:4] = 1  # 16 px
    ref[5:9, 5:9] = 2  # 16 px
    pred = np.zeros((10, 10), np.uint32)
    pred[0:4, 0:2] = 7  # 8 px inside ref 1
    pred[0:4, 2:4] = 8  # 8 px inside ref 1 -> ref 1 is split
    pred[5:9, 5:9] = 9  # exact match of ref 2
    pred[9, 0:4] = 10  # 4 px false positive on background
    return pred, ref


def test_pixel_metrics_hand_computed():
    pred, ref = _two_squares()
    m = M.pixel_metrics(M.contingency(pred, ref))
    assert m["precision"] == pytest.approx(32 / 36)
    assert m["recall"] == pytest.approx(32 / 32)
    assert m["f1"] == pytest.approx(2 * 32 / (36 + 32))
    assert m["dice"] == m["f1"]
    # best IoU per predicted cell: 8/16, 8/16, 1, 0
    assert m["mean_jaccard"] == pytest.approx((0.5 + 0.5 + 1 + 0) / 4)


def test_contingency_independent_of_block_and_zarr(tmp_path):
    pred, ref = _two_squares()
    z = zarr.create_array(str(tmp_path / "p.zarr"), shape=pred.shape, chunks=(3, 3), dtype="uint32")
    z[:] = pred
    a = M.contingency(pred, ref, block=10000).toarray()
    b = M.contingency(z, ref, block=3).toarray()
    assert np.array_equal(a, b)
    assert a.sum() == 100


def test_instance_metrics_split_merge_sweep():
    pred, ref = _two_squares()
    m = M.instance_metrics(M.contingency(pred, ref))
    s = m["sweep"]["0.5"]
    # 7 and 8 both reach IoU 0.5 with ref 1; only one may match it
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 0)
    assert s["mean_matched_iou"] == pytest.approx(0.75)
    m9 = m["sweep"]["0.9"]
    assert (m9["tp"], m9["fp"], m9["fn"]) == (1, 3, 1)
    assert m9["f1"] == pytest.approx(2 / (2 + 3 + 1))
    assert m9["mean_matched_iou"] == 1.0
    assert m["splits"] == 1 and m["merges"] == 0
    merged = np.where(ref > 0, 5, 0).astype(np.uint32)
    mm = M.instance_metrics(M.contingency(merged, ref))
    assert mm["merges"] == 1 and mm["splits"] == 0
    assert mm["sweep"]["0.5"]["tp"] == 1 and mm["sweep"]["0.6"]["tp"] == 0


def test_instance_matching_unique_above_half():
    ref = np.zeros((4, 8), np.uint32)
    ref[:, :4] = 1
    ref[:, 4:] = 2
    pred = np.zeros_like(ref)
    pred[:, :3] = 1  # IoU 12/16 = 0.75 with ref 1
    pred[:, 3:8] = 2  # IoU 16/20 = 0.8 with ref 2, 4/28 with ref 1
    m = M.instance_metrics(M.contingency(pred, ref))
    assert m["sweep"]["0.5"]["tp"] == 2
    assert m["sweep"]["0.5"]["mean_matched_iou"] == pytest.approx((0.75 + 0.8) / 2)
    assert m["sweep"]["0.8"]["tp"] == 1
    assert m["sweep"]["0.9"]["tp"] == 0 and m["sweep"]["0.9"]["f1"] == 0


def test_shape_mismatch_rejected():
    with pytest.raises(InputError, match="shape"):
        M.contingency(np.zeros((3, 3), np.uint32), np.zeros((3, 4), np.uint32))


def test_ari_hand_computed():
    # classic example: a = [0,0,1,1], b = [0,0,1,2]
    # table: n_ij = [2,0,0;0,1,1]; sum C(nij,2)=1; a sums 2,2 -> 2; b sums 2,1,1 -> 1; total
    # C(4,2)=6
    # expected = 2*1/6 = 1/3; max = 1.5; ARI = (1-1/3)/(1.5-1/3) = 4/7
    assert M.adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])) == pytest.approx(
        4 / 7
    )
    assert M.adjusted_rand_index(np.array([3, 3, 5, 5]), np.array([1, 1, 2, 2])) == pytest.approx(
        1.0
    )


def test_transcript_metrics_hand_computed():
    ref = np.array([1, 1, 1, 2, 2, 0, 0, 3])
    pred = np.array([5, 5, 6, 6, 6, 6, 0, 0])
    m = M.transcript_metrics(pred, ref)
    # cell 5 -> majority ref 1 (2/2); cell 6 -> majority ref 2 (2 of 4)
    assert m["purity"] == pytest.approx((2 + 2) / 6)
    # correct: ref1 in cell5 (2), ref2 in cell6 (2) -> 4 of 6 in-cell reference transcripts
    assert m["fraction_correct"] == pytest.approx(4 / 6)
    assert m["n_assigned_pred"] == 6 and m["n_assigned_ref"] == 6
    # in a cell in both: pred [5,5,6,6,6] vs ref [1,1,1,2,2]: nij 2,1,2 -> 2; rows 1+3=4; cols
    # 3+1=4;
    # C(5,2)=10, expected 1.6, max 4 -> (2-1.6)/(4-1.6)
    assert m["ari_in_cells"] == pytest.approx(0.4 / 2.4)


def test_cell_calling_score_hand_computed():
    lab = np.zeros((20, 20), np.uint32)
    lab[5:10, 5:10] = 1
    rows = np.array([6, 7, 8, 7, 7, 7, 19])
    cols = np.array([6, 7, 8, 12, 14, 16, 0])
    # inside: 3; distances outside to the cell (edge col 9): 3, 5, 7, and one far away
    s = M.cell_calling_score(lab, rows, cols)
    assert s == {"ccs_delta3": 3 / 1, "ccs_delta5": 3 / 2, "ccs_delta7": 3 / 3}
    assert M.cell_calling_score(lab, rows, cols, block=4) == s


def test_baseline_metrics():
    cells = pd.DataFrame(
        {"area_um2": [10.0, 20.0, 30.0], "n_transcripts": [10, 20, 60], "n_genes": [1, 2, 3]}
    )
    m = M.baseline_metrics(cells, 180)
    assert m["coverage_rate"] == pytest.approx(0.5)
    assert m["median_area_um2"] == 20 and m["median_genes_per_cell"] == 2
    assert m["median_transcript_density_per_um2"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="n_genes"):
        M.baseline_metrics(cells.drop(columns="n_genes"), 1)


def test_shape_descriptors():
    from skimage.draw import ellipse

    disk = np.zeros((41, 41), bool)
    disk[ellipse(20, 20, 15, 15)] = True
    ecc, elong, conv = M.shape_descriptors(disk)
    assert ecc < 0.1 and elong == pytest.approx(1.0, abs=0.1) and conv > 0.9
    long = np.zeros((41, 81), bool)
    long[ellipse(20, 40, 8, 32)] = True
    ecc2, elong2, _ = M.shape_descriptors(long)
    assert ecc2 == pytest.approx(np.sqrt(1 - (8 / 32) ** 2), abs=0.03) and elong2 > 8
    ell = np.zeros((30, 30), bool)  # an L: the hull perimeter is clearly shorter than the outline
    ell[0:30, 0:8] = True
    ell[22:30, 0:30] = True
    # outline 30+30+8+22+22+8 = 120; hull 30+30+8+8+22*sqrt(2) = 107
    assert M.shape_descriptors(ell)[2] == pytest.approx((76 + 22 * np.sqrt(2)) / 120, abs=0.03)
    assert M.shape_descriptors(ell)[2] < conv


def test_morphology_block_independent():
    lab = np.zeros((64, 64), np.uint32)
    lab[2:10, 2:30] = 1
    lab[40:60, 40:50] = 2
    a = M.morphology_metrics(lab, block=64)
    b = M.morphology_metrics(lab, block=32)
    assert a["n_measured"] == 2 and b == a


def test_profile_and_petukhov_correlation():
    counts = pd.DataFrame(
        {"g1": [1, 3, 0], "g2": [2, 1, 5], "g3": [0, 2, 1]}, index=["a", "b", "c"]
    )
    types = pd.Series(["T", "T", "B"], index=counts.index)
    ref = pd.DataFrame({"g1": [2.0, 0.0], "g2": [1.5, 5.0], "g3": [1.0, 1.0]}, index=["T", "B"])
    r = M.profile_correlation(counts, types, ref)
    assert r["per_type"]["T"] == pytest.approx(1.0)
    assert r["per_type"]["B"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="genes"):
        M.profile_correlation(counts[["g1"]], types, ref[["g1"]])
    genes = np.array(["x"] * 10 + ["y"] * 10 + ["x"] * 5 + ["y"] * 15)
    a = np.ones(40, int)  # one predicted cell spanning two reference cells
    b = np.array([1] * 20 + [2] * 20)
    p = M.petukhov_correlation(genes, a, b, min_transcripts=5)
    assert p["n_pairs"] == 0  # x/y balanced on the shared side: zero variance, not counted
    genes2 = np.array(["x"] * 15 + ["y"] * 5 + ["x"] * 5 + ["y"] * 15)
    p2 = M.petukhov_correlation(
        np.r_[genes2, ["z"] * 4], np.r_[a, [1] * 4], np.r_[b, [1, 1, 2, 2]], min_transcripts=5
    )
    assert p2["n_pairs"] == 1 and p2["median_r"] < 0


def _two_types(rng, n_cells=80, per_cell=30):
    """Cells of two types with disjoint gene programs (type A: genes 0-4, type B: genes 5-9),
    half of each cell's transcripts in its nucleus.
    """
    cells = np.repeat(np.arange(1, n_cells + 1), per_cell)
    kind = cells % 2
    genes = np.where(kind == 0, rng.integers(0, 5, len(cells)), rng.integers(5, 10, len(cells)))
    in_nucleus = rng.random(len(cells)) < 0.5
    return cells, genes, in_nucleus


def test_exclusive_pairs_mark_different_types():
    cells, genes, in_nucleus = _two_types(np.random.default_rng(0))
    pairs = M.exclusive_gene_pairs(np.where(in_nucleus, cells, 0), genes)
    assert pairs and all((a < 5) != (b < 5) for a, b in pairs)  # one gene of each program
    assert (
        M.exclusive_gene_pairs(np.where(in_nucleus, cells, 0)[:50], genes[:50]) == []
    )  # too few nuclei


def test_mecr_rises_when_cells_mix_types():
    cells, genes, in_nucleus = _two_types(np.random.default_rng(1))
    pairs = M.exclusive_gene_pairs(np.where(in_nucleus, cells, 0), genes)
    pure = M.mecr(cells, genes, pairs)
    merged = M.mecr(
        np.where(cells % 2 == 0, cells, cells + 1), genes, pairs
    )  # each cell swallows a neighbour
    assert pure["mecr"] == 0.0 and pure["n_pairs"] == len(pairs)
    assert merged["mecr"] > 0.9
    assert np.isnan(M.mecr(cells, genes, [])["mecr"])


def test_mecr_hand_computed():
    # cells 1: genes {0, 1}; 2: {0}; 3: {1}; 4: {2}; pair (0, 1): 3 cells express either, 1 both
    cells = np.array([1, 1, 2, 3, 4, 0])
    genes = np.array([0, 1, 0, 1, 2, 1])
    assert M.mecr(cells, genes, [(0, 1)])["mecr"] == pytest.approx(1 / 3)


def test_marker_pairs_cross_types_only():
    markers = pd.DataFrame(
        {"cell_type": ["T", "T", "B", "Mac"], "gene": ["CD3E", "CD8A", "MS4A1", "ABSENT"]}
    )
    index = {"CD3E": 0, "CD8A": 1, "MS4A1": 2}
    assert M.marker_gene_pairs(markers, index) == [(0, 2), (1, 2)]


def test_nucleus_cytoplasm_r_drops_when_cytoplasm_is_a_neighbours():
    rng = np.random.default_rng(2)
    cells, genes, in_nucleus = _two_types(rng, per_cell=60)
    own = M.nucleus_cytoplasm_r(cells, in_nucleus, genes)
    # the cytoplasm of every cell is replaced by its neighbour's (of the other type)
    swapped = np.where(in_nucleus, cells, np.where(cells % 2 == 0, cells - 1, cells + 1))
    stolen = M.nucleus_cytoplasm_r(swapped, in_nucleus, genes)
    assert own["median_r"] > 0.5 > stolen["median_r"] and own["n_cells"] > 70
