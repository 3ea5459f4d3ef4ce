"""Nucleus scores on hand-made label images, one per rule that can fail."""

import numpy as np
import pytest
import zarr

from stseg_dist.errors import InputError
from stseg_dist.evaluation import nuclei as N


def _img(n=20):
    return np.zeros((n, n), np.uint32)


def test_exact_match_scores_one():
    ref = _img()
    ref[2:6, 2:6] = 1
    ref[10:14, 10:14] = 2
    pred = np.where(ref == 1, 5, np.where(ref == 2, 9, 0)).astype(np.uint32)
    m = N.nucleus_metrics(pred, ref)
    assert m["containment_f1"] == 1.0 and m["iou50_f1"] == 1.0
    assert (m["missed"], m["merged"], m["split"]) == (0, 0, 0)
    assert N.containment_matches(N.contingency(pred, ref)) == [(5, 1), (9, 2)]


def test_containment_matches_small_reference_that_iou_rejects():
    ref = _img()
    ref[5:8, 5:8] = 1  # 9 px transcript-hull nucleus
    pred = _img()
    pred[4:9, 4:9] = 3  # 25 px stained nucleus: 9/25 = 36% on the reference
    m = N.nucleus_metrics(pred, ref)
    assert m["containment_f1"] == 1.0
    assert m["iou50_f1"] == 0.0  # IoU 0.36
    assert m["missed"] == 0


def test_prediction_lying_under_30_percent_on_reference_does_not_match():
    ref = _img()
    ref[5:8, 5:8] = 1
    pred = _img()
    pred[3:9, 3:9] = 3  # 9/36 = 25% on the reference
    m = N.nucleus_metrics(pred, ref)
    assert m["containment_f1"] == 0.0
    assert m["containment_precision"] == 0.0 and m["containment_recall"] == 0.0
    assert m["missed"] == 0  # fully covered, just too large


def test_under_half_coverage_does_not_match_and_counts_missed():
    ref = _img()
    ref[0:3, 0:3] = 1  # 9 px
    pred = _img()
    pred[0:2, 0:2] = 4  # covers 4/9 < 0.5
    m = N.nucleus_metrics(pred, ref)
    assert m["containment_matched"] == 0
    assert m["missed"] == 1
    # missed counts coverage by all predictions together: two halves of one nucleus cover it
    pred[2, 0:3] = 6  # 4 + 3 = 7/9 covered
    assert N.nucleus_metrics(pred, ref)["missed"] == 0


def test_prediction_covering_two_references_is_merged_not_matched():
    ref = _img()
    ref[2:6, 2:6] = 1
    ref[2:6, 8:12] = 2
    pred = _img()
    pred[2:6, 2:12] = 7  # covers both fully, 40% on each
    m = N.nucleus_metrics(pred, ref)
    assert m["merged"] == 1
    assert m["containment_matched"] == 0
    assert m["missed"] == 0
    # covering half of the second one is enough to disqualify the match
    pred[:] = 0
    pred[2:6, 2:6] = 7
    pred[2:6, 8:10] = 7  # exactly half of ref 2
    m = N.nucleus_metrics(pred, ref)
    assert m["merged"] == 1 and m["containment_matched"] == 0
    pred[2:6, 9] = 0  # a quarter of ref 2: now it matches ref 1 only
    m = N.nucleus_metrics(pred, ref)
    assert m["merged"] == 0 and m["containment_matched"] == 1
    assert N.containment_matches(N.contingency(pred, ref)) == [(7, 1)]


def test_split_reference_matches_once():
    ref = _img()
    ref[4:8, 4:8] = 1
    pred = _img()
    pred[4:8, 4:6] = 2  # each half covers exactly 50% of the reference
    pred[4:8, 6:8] = 3
    m = N.nucleus_metrics(pred, ref)
    assert m["split"] == 1
    assert m["containment_matched"] == 1  # one-to-one
    assert m["containment_precision"] == 0.5 and m["containment_recall"] == 1.0
    assert m["containment_f1"] == pytest.approx(2 / 3)
    # a sliver mostly off the reference is not a split piece
    pred[:] = 0
    pred[4:8, 4:8] = 2
    pred[8:12, 4:8] = 3
    pred[7, 4:8] = 3  # 4 of 20 px of pred 3 on the reference
    assert N.nucleus_metrics(pred, ref)["split"] == 0


def test_counts_false_positive_and_missed_in_f1():
    ref = _img()
    ref[0:4, 0:4] = 1
    ref[10:14, 10:14] = 2
    pred = _img()
    pred[0:4, 0:4] = 1
    pred[16:19, 0:3] = 2  # on background
    m = N.nucleus_metrics(pred, ref)
    assert (m["n_pred"], m["n_ref"], m["containment_matched"]) == (2, 2, 1)
    assert m["containment_f1"] == 0.5 and m["iou50_f1"] == 0.5
    assert m["missed"] == 1


def test_zarr_and_blocks_give_same_scores(tmp_path):
    rng = np.random.default_rng(0)
    ref = _img(40)
    pred = _img(40)
    for k in range(1, 10):
        r, c = rng.integers(0, 34, 2)
        ref[r : r + 4, c : c + 4] = k
        pred[r : r + 5, c + 1 : c + 5] = k + 20
    z = zarr.create_array(str(tmp_path / "p.zarr"), shape=pred.shape, chunks=(7, 7), dtype="uint32")
    z[:] = pred
    assert N.nucleus_metrics(z, ref, block=7) == N.nucleus_metrics(pred, ref)


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(InputError, match=r"\(20, 20\).*\(10, 10\)"):
        N.nucleus_metrics(_img(20), _img(10))


def test_empty_prediction_scores_zero():
    ref = _img()
    ref[0:3, 0:3] = 1
    m = N.nucleus_metrics(_img(), ref)
    assert m["containment_f1"] == 0.0 and m["iou50_f1"] == 0.0 and m["missed"] == 1


def test_in_labels_reads_blocks_and_ignores_points_off_grid():
    lab = _img(10)
    lab[2:4, 6:9] = 3
    rows = np.array([2, 3, 3, 0, -1, 12, 9])
    cols = np.array([6, 8, 5, 0, 6, 6, 9])
    want = [True, True, False, False, False, False, False]
    assert N.in_labels(lab, rows, cols, block=3).tolist() == want
    assert N.in_labels(lab, rows, cols).tolist() == want


def test_transcript_agreement_hand_computed():
    pred = np.array([1, 1, 1, 0, 0, 1], bool)
    ref = np.array([1, 0, 1, 1, 0, 1], bool)
    m = N.transcript_nucleus_agreement(pred, ref)
    assert m["transcript_precision"] == 0.75  # 3 of 4 predicted
    assert m["transcript_recall"] == 0.75  # 3 of 4 reference
    assert m["transcript_f1"] == 0.75
    assert (m["n_in_nucleus_pred"], m["n_in_nucleus_ref"]) == (4, 4)
    with pytest.raises(InputError, match="differ in length"):
        N.transcript_nucleus_agreement(pred, ref[:3])


def test_format_is_readable():
    ref = _img()
    ref[2:6, 2:6] = 1
    m = N.nucleus_metrics(ref, ref)
    m.update(N.transcript_nucleus_agreement(np.ones(3, bool), np.ones(3, bool)))
    text = N.format_nucleus_metrics(m)
    assert "containment F1 1.000" in text and "transcripts in a nucleus: precision 1.000" in text


def test_subsets_count_only_their_nuclei_matched_against_all():
    ref = _img()
    ref[0:4, 0:4] = 1  # left, matched
    ref[0:4, 14:18] = 2  # right, missed
    pred = _img()
    pred[0:4, 0:4] = 5
    pred[10:13, 14:17] = 6  # right, false positive
    table = N.contingency(pred, ref)
    left = N.nucleus_scores(table, pred_ids=[5], ref_ids=[1])
    assert left["containment_f1"] == 1.0 and left["missed"] == 0
    right = N.nucleus_scores(table, pred_ids=[6], ref_ids=[2])
    assert right["containment_f1"] == 0.0 and right["missed"] == 1
    assert (right["n_pred"], right["n_ref"]) == (1, 1)
    ids, rows, cols = N.label_centroids(pred, block=5)
    assert ids.tolist() == [5, 6]
    np.testing.assert_allclose(rows, [1.5, 11.0])
    np.testing.assert_allclose(cols, [1.5, 15.0])
