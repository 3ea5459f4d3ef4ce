"""Nucleus-stage scores: predicted nuclei labels against reference nuclei on the same grid.

Pure functions (no I/O, no Ray). Every object-level score derives from the sparse pixel
contingency of :func:`stseg_dist.evaluation.metrics.contingency`, so whole-chip zarr labels are
read block by block.

Reference nuclei often come from transcripts (the hull of a vendor cell's nucleus-flagged
transcripts), which is smaller than the stained nucleus; a prediction that contains such a
nucleus is right even though its IoU is low. Hence the primary score is *containment*:

- a prediction P matches a reference nucleus R when P covers >= ``cover`` (0.5) of R, covers
  >= ``cover`` of no other reference nucleus, and lies >= ``on`` (0.3) on R; matches are
  one-to-one (the highest coverage of R wins a tie).

Counts, each defined on the same contingency:

- ``missed``: reference nuclei less than half covered by all predictions together;
- ``merged``: predictions covering >= ``cover`` of two or more reference nuclei;
- ``split``: reference nuclei on which two or more predictions each lie with >= 50% of
  their own area.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from .metrics import _one_to_one, contingency, iou_matrix

COVER = 0.5  # share of the reference nucleus a matching prediction must cover
ON = 0.3  # share of the prediction that must lie on the reference nucleus
IOU = 0.5


def _pairs(table: sp.csr_matrix):
    """Foreground (pred, ref, overlap) triples with both areas."""
    t = table.tocoo()
    area_p = np.asarray(table.sum(axis=1)).ravel()
    area_r = np.asarray(table.sum(axis=0)).ravel()
    keep = (t.row > 0) & (t.col > 0)
    return t.row[keep], t.col[keep], t.data[keep].astype(float), area_p, area_r


def containment_matches(
    table: sp.csr_matrix, cover: float = COVER, on: float = ON
) -> list[tuple[int, int]]:
    """One-to-one (pred, ref) containment matches (see the module docstring)."""
    r, c, inter, area_p, area_r = _pairs(table)
    covers = inter / area_r[c] >= cover
    n_covered = np.bincount(r[covers], minlength=table.shape[0])
    ok = covers & (n_covered[r] == 1) & (inter / area_p[r] >= on)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-(inter[idx] / area_r[c[idx]]), kind="stable")]
    used_p, used_r, out = set(), set(), []
    for i in idx:
        p, q = int(r[i]), int(c[i])
        if p not in used_p and q not in used_r:
            used_p.add(p)
            used_r.add(q)
            out.append((p, q))
    return sorted(out)


def _keep(ids, n: int) -> np.ndarray:
    keep = np.zeros(n, bool)
    if ids is None:
        keep[1:] = True
    else:
        ids = np.asarray(list(ids), np.int64)
        keep[ids[(ids > 0) & (ids < n)]] = True
    return keep


def nucleus_scores(
    table: sp.csr_matrix,
    cover: float = COVER,
    on: float = ON,
    pred_ids=None,
    ref_ids=None,
) -> dict:
    """Containment and IoU >= 0.5 F1, missed, merged and split counts from a contingency table.

    ``pred_ids`` / ``ref_ids`` restrict the count to those nuclei (e.g. the ones whose centroid
    lies in one half of a chip), matched against all: precision counts matched predictions among
    ``pred_ids``, recall matched references among ``ref_ids``, and F1 is their matched share of
    both. Without them every nucleus counts.
    """
    r, c, inter, area_p, area_r = _pairs(table)
    kp = _keep(pred_ids, table.shape[0]) & (area_p > 0)
    kr = _keep(ref_ids, table.shape[1]) & (area_r > 0)
    n_pred, n_ref = int(kp.sum()), int(kr.sum())

    def scores(pairs) -> dict:
        tp_p = sum(1 for p, _ in pairs if kp[p])
        tp_r = sum(1 for _, q in pairs if kr[q])
        return {
            "f1": (tp_p + tp_r) / (n_pred + n_ref) if n_pred + n_ref else 0.0,
            "precision": tp_p / n_pred if n_pred else 0.0,
            "recall": tp_r / n_ref if n_ref else 0.0,
            "tp": tp_r,
        }

    cont = scores(containment_matches(table, cover, on))
    iou = iou_matrix(table).tocoo()
    m = _one_to_one(iou, IOU) if iou.nnz else np.zeros(0, bool)
    iou_s = scores(list(zip(iou.row[m].tolist(), iou.col[m].tolist(), strict=True)))
    covered = np.bincount(c, weights=inter, minlength=table.shape[1])
    missed = int((kr & (covered < 0.5 * area_r)).sum())
    covers = inter / area_r[c] >= cover
    merged = int((kp & (np.bincount(r[covers], minlength=table.shape[0]) >= 2)).sum())
    mostly_on = inter / area_p[r] >= 0.5
    split = int((kr & (np.bincount(c[mostly_on], minlength=table.shape[1]) >= 2)).sum())
    return {
        "n_pred": n_pred,
        "n_ref": n_ref,
        "containment_f1": cont["f1"],
        "containment_precision": cont["precision"],
        "containment_recall": cont["recall"],
        "containment_matched": cont["tp"],
        "iou50_f1": iou_s["f1"],
        "iou50_matched": iou_s["tp"],
        "missed": missed,
        "merged": merged,
        "split": split,
    }


def label_centroids(labels, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, row, col) centroid of every label, read block by block."""
    n, sr, sc = {}, {}, {}
    for r0 in range(0, labels.shape[0], block):
        for c0 in range(0, labels.shape[1], block):
            lab = np.asarray(labels[r0 : r0 + block, c0 : c0 + block]).astype(np.int64)
            rr, cc = np.nonzero(lab)
            ids, inv, cnt = np.unique(lab[rr, cc], return_inverse=True, return_counts=True)
            srr = np.bincount(inv, weights=rr + r0)
            scc = np.bincount(inv, weights=cc + c0)
            for k, i in enumerate(ids.tolist()):
                n[i] = n.get(i, 0) + cnt[k]
                sr[i] = sr.get(i, 0.0) + srr[k]
                sc[i] = sc.get(i, 0.0) + scc[k]
    ids = np.array(sorted(n), np.int64)
    cnt = np.array([n[i] for i in ids], float)
    return (
        ids,
        np.array([sr[i] for i in ids]) / np.maximum(cnt, 1),
        np.array([sc[i] for i in ids]) / np.maximum(cnt, 1),
    )


def nucleus_metrics(pred, ref, block: int = 2048, cover: float = COVER, on: float = ON) -> dict:
    """Score predicted nuclei labels against reference nuclei labels (numpy or zarr, same shape)."""
    return nucleus_scores(contingency(pred, ref, block=block), cover=cover, on=on)


def in_labels(labels, rows: np.ndarray, cols: np.ndarray, block: int = 2048) -> np.ndarray:
    """Whether each (row, col) pixel lies in a labelled object; points off the grid are False.

    Reads the label array block by block, so zarr arrays are never loaded whole.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    h, w = labels.shape
    out = np.zeros(rows.shape, bool)
    ok = np.flatnonzero((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w))
    if not len(ok):
        return out
    key = (rows[ok] // block) * ((w + block - 1) // block) + cols[ok] // block
    order = np.argsort(key, kind="stable")
    ok, key = ok[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(key)], strict=True):
        idx = ok[s:e]
        r0 = int(rows[idx[0]] // block) * block
        c0 = int(cols[idx[0]] // block) * block
        tile = np.asarray(labels[r0 : min(r0 + block, h), c0 : min(c0 + block, w)])
        out[idx] = tile[rows[idx] - r0, cols[idx] - c0] > 0
    return out


def transcript_nucleus_agreement(pred_in: np.ndarray, ref_in: np.ndarray) -> dict:
    """Precision and recall of "this transcript lies in a nucleus" against a reference flag.

    ``ref_in`` is e.g. Xenium ``overlaps_nucleus`` or CosMx ``CellComp == "Nuclear"``.
    """
    pred_in = np.asarray(pred_in, bool)
    ref_in = np.asarray(ref_in, bool)
    if pred_in.shape != ref_in.shape:
        raise InputError(
            f"per-transcript nucleus flags differ in length: prediction {pred_in.shape} "
            f"vs reference {ref_in.shape}"
        )
    tp = int((pred_in & ref_in).sum())
    n_pred, n_ref = int(pred_in.sum()), int(ref_in.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 0.0
    return {
        "transcript_precision": precision,
        "transcript_recall": recall,
        "transcript_f1": f1,
        "n_transcripts": int(pred_in.size),
        "n_in_nucleus_pred": n_pred,
        "n_in_nucleus_ref": n_ref,
    }


def format_nucleus_metrics(m: dict) -> str:
    """One readable line per figure group, for printing (keys absent from ``m`` are skipped)."""
    lines = []
    if "containment_f1" in m:
        lines.append(
            f"nuclei: {m['n_pred']} predicted vs {m['n_ref']} reference; "
            f"containment F1 {m['containment_f1']:.3f} "
            f"(precision {m['containment_precision']:.3f}, recall {m['containment_recall']:.3f}); "
            f"IoU>=0.5 F1 {m['iou50_f1']:.3f}; missed {m['missed']}, merged {m['merged']}, "
            f"split {m['split']}"
        )
    if "transcript_precision" in m:
        lines.append(
            f"transcripts in a nucleus: precision {m['transcript_precision']:.3f}, "
            f"recall {m['transcript_recall']:.3f} "
            f"({m['n_in_nucleus_pred']} predicted, {m['n_in_nucleus_ref']} reference "
            f"of {m['n_transcripts']})"
        )
    return "\n".join(lines)
