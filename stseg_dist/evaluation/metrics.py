"""Segmentation metrics as pure functions over label arrays and transcript tables.

Label-pair counts are accumulated chunk by chunk into a sparse contingency table, so whole-chip
label arrays (zarr) are never loaded at once; every other pixel metric derives from that table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from ..errors import InputError

IOU_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.9)


def _blocks(shape, block):
    for r in range(0, shape[0], block):
        for c in range(0, shape[1], block):
            yield slice(r, min(r + block, shape[0])), slice(c, min(c + block, shape[1]))


def contingency(pred, ref, block: int = 2048) -> sp.csr_matrix:
    """Pixel counts of every (pred label, ref label) pair, accumulated per block.

    Works for numpy or zarr arrays of the same 2-D shape; row/column 0 hold background.
    """
    if tuple(pred.shape) != tuple(ref.shape):
        raise InputError(
            f"label arrays differ in shape: prediction {tuple(pred.shape)} vs reference "
            f"{tuple(ref.shape)}"
        )
    rows, cols, vals = [], [], []
    for rs, cs in _blocks(pred.shape, block):
        p = np.asarray(pred[rs, cs], dtype=np.uint64).ravel()
        q = np.asarray(ref[rs, cs], dtype=np.uint64).ravel()
        keys, counts = np.unique((p << np.uint64(32)) | q, return_counts=True)
        rows.append((keys >> np.uint64(32)).astype(np.int64))
        cols.append((keys & np.uint64(0xFFFFFFFF)).astype(np.int64))
        vals.append(counts.astype(np.int64))
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    shape = (int(r.max()) + 1, int(c.max()) + 1)
    return sp.coo_matrix((v, (r, c)), shape=shape).tocsr()


def pixel_metrics(table: sp.csr_matrix) -> dict:
    """Foreground precision, recall, F1 (= Dice) and mean Jaccard over predicted cells
    (STCellbin).
    """
    t = table.tocoo()
    fg = (t.row > 0) & (t.col > 0)
    tp = float(t.data[fg].sum())
    pred_fg = float(t.data[t.row > 0].sum())
    ref_fg = float(t.data[t.col > 0].sum())
    precision = tp / pred_fg if pred_fg else 0.0
    recall = tp / ref_fg if ref_fg else 0.0
    f1 = 2 * tp / (pred_fg + ref_fg) if pred_fg + ref_fg else 0.0
    iou = iou_matrix(table)
    pred_ids = np.unique(t.row[t.row > 0])
    best = np.asarray(iou.max(axis=1).todense()).ravel() if iou.nnz else np.zeros(iou.shape[0])
    mean_jaccard = float(best[pred_ids].mean()) if len(pred_ids) else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "dice": f1,
        "mean_jaccard": mean_jaccard,
    }


def iou_matrix(table: sp.csr_matrix) -> sp.csr_matrix:
    """IoU of every overlapping (pred, ref) cell pair; background row/column dropped (zeroed)."""
    t = table.tocoo()
    area_p = np.asarray(table.sum(axis=1)).ravel()
    area_r = np.asarray(table.sum(axis=0)).ravel()
    keep = (t.row > 0) & (t.col > 0)
    r, c, inter = t.row[keep], t.col[keep], t.data[keep].astype(float)
    iou = inter / (area_p[r] + area_r[c] - inter)
    return sp.coo_matrix((iou, (r, c)), shape=table.shape).tocsr()


def _one_to_one(iou: sp.coo_matrix, thr: float) -> np.ndarray:
    """Mask of pairs with IoU >= thr kept one-to-one (highest IoU first; only ties at 0.5
    compete).
    """
    cand = np.flatnonzero(iou.data >= thr)
    cand = cand[np.argsort(-iou.data[cand], kind="stable")]
    used_r, used_c, keep = set(), set(), np.zeros(iou.data.shape, bool)
    for i in cand:
        r, c = int(iou.row[i]), int(iou.col[i])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            keep[i] = True
    return keep


def instance_metrics(table: sp.csr_matrix, thresholds=IOU_SWEEP) -> dict:
    """Matched F1 and mean matched IoU at each IoU threshold; split and merge counts.

    Above IoU 0.5 a match is unique; ties at exactly 0.5 are resolved one-to-one. A split is
    a reference cell that holds the majority of >= 2 predicted cells; a merge is a predicted
    cell that holds the majority of >= 2 reference cells.
    """
    t = table.tocoo()
    n_pred = int(np.count_nonzero(np.asarray(table[1:].sum(axis=1)).ravel()))
    n_ref = int(np.count_nonzero(np.asarray(table[:, 1:].sum(axis=0)).ravel()))
    iou = iou_matrix(table).tocoo()
    out: dict = {"n_pred_cells": n_pred, "n_ref_cells": n_ref, "sweep": {}}
    for thr in thresholds:
        m = _one_to_one(iou, thr)
        tp = int(m.sum())
        fp, fn = n_pred - tp, n_ref - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 0.0
        out["sweep"][f"{thr:.1f}"] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "f1": f1,
            "mean_matched_iou": float(iou.data[m].mean()) if tp else 0.0,
        }
    area_p = np.asarray(table.sum(axis=1)).ravel()
    area_r = np.asarray(table.sum(axis=0)).ravel()
    keep = (t.row > 0) & (t.col > 0)
    r, c, v = t.row[keep], t.col[keep], t.data[keep]
    pred_major = v * 2 > area_p[r]  # this ref cell holds most of pred cell r
    ref_major = v * 2 > area_r[c]
    out["splits"] = int((np.bincount(c[pred_major], minlength=table.shape[1]) >= 2).sum())
    out["merges"] = int((np.bincount(r[ref_major], minlength=table.shape[0]) >= 2).sum())
    out.update(
        {k: out["sweep"]["0.5"][k] for k in ("f1", "mean_matched_iou")}
        if "0.5" in out["sweep"]
        else {}
    )
    return out


def _comb2(x):
    x = np.asarray(x, dtype=float)
    return float((x * (x - 1) / 2).sum())


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI of two labelings (Hubert & Arabie) from a sparse contingency table; 0 is a label too."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"assignments differ in length: {a.shape} vs {b.shape}")
    n = a.size
    if n < 2:
        return 1.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = sp.coo_matrix((np.ones(n), (ai.ravel(), bi.ravel()))).tocsr()
    sum_ij = _comb2(table.data)
    sum_a = _comb2(np.asarray(table.sum(axis=1)).ravel())
    sum_b = _comb2(np.asarray(table.sum(axis=0)).ravel())
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return float((sum_ij - expected) / (maximum - expected))


def transcript_metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Per-transcript agreement of cell assignments (0 = unassigned).

    ``fraction_correct``: of transcripts the reference puts in a cell, the share whose predicted
    cell's majority reference cell is that cell. ``purity``: transcript-weighted share of each
    predicted cell's transcripts that come from its majority reference cell (background counts
    as impure).
    """
    pred = np.asarray(pred, dtype=np.int64)
    ref = np.asarray(ref, dtype=np.int64)
    ari = adjusted_rand_index(pred, ref)
    both = (pred > 0) & (ref > 0)
    ari_cells = adjusted_rand_index(pred[both], ref[both]) if both.any() else 0.0
    df = pd.DataFrame({"p": pred, "r": ref})
    inside = df[df.p > 0]
    if len(inside):
        counts = inside.groupby(["p", "r"]).size().rename("n").reset_index()
        cells = counts[counts.r > 0].sort_values(["p", "n", "r"], ascending=[True, False, True])
        majority = cells.drop_duplicates("p").set_index("p")
        purity = float(majority["n"].sum() / len(inside))
        mapped = inside.p.map(majority["r"]).fillna(0).to_numpy()
        correct = int(((mapped == inside.r.to_numpy()) & (inside.r.to_numpy() > 0)).sum())
    else:
        purity, correct = 0.0, 0
    n_ref = int((ref > 0).sum())
    return {
        "ari": ari,  # 0 (unassigned / background) counts as one more cluster
        "ari_in_cells": ari_cells,  # only transcripts inside a cell in both
        "fraction_correct": correct / n_ref if n_ref else 0.0,
        "purity": purity,
        "n_transcripts": int(pred.size),
        "n_assigned_pred": int((pred > 0).sum()),
        "n_assigned_ref": n_ref,
    }


def cell_calling_score(
    labels, rows: np.ndarray, cols: np.ndarray, deltas=(3, 5, 7), block: int = 2048
) -> dict:
    """GeneSegNet cell calling score: transcripts inside cells over those within delta px outside.

    Distances are exact (Euclidean distance transform) within a halo of max(delta) around each
    block, so the result does not depend on the block size. Higher is better; inf if no
    transcript lies in the outside band.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    h, w = labels.shape
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    rows, cols = rows[ok], cols[ok]
    halo = int(max(deltas)) + 1
    inside = 0
    near = np.zeros(len(deltas), dtype=np.int64)
    order = np.lexsort((cols // block, rows // block))
    br, bc = rows[order] // block, cols[order] // block
    keys = br * ((w + block - 1) // block + 1) + bc
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for s, e in zip(starts, ends, strict=True):
        idx = order[s:e]
        r0, c0 = int(br[s]) * block, int(bc[s]) * block
        R0, C0 = max(r0 - halo, 0), max(c0 - halo, 0)
        R1, C1 = min(r0 + block + halo, h), min(c0 + block + halo, w)
        lab = np.asarray(labels[R0:R1, C0:C1])
        fg = lab > 0
        if fg.any():
            dist = ndimage.distance_transform_edt(~fg)
        else:
            dist = np.full(lab.shape, np.inf)
        d = dist[rows[idx] - R0, cols[idx] - C0]
        inside += int((d == 0).sum())
        for k, delta in enumerate(deltas):
            near[k] += int(((d > 0) & (d <= delta)).sum())
    return {
        f"ccs_delta{d}": (inside / n if n else float("inf"))
        for d, n in zip(deltas, near, strict=True)
    }


def baseline_metrics(cells: pd.DataFrame, n_transcripts: int) -> dict:
    """UCS baseline characteristics: coverage, cell area, transcripts and genes per cell,
    density.
    """
    for col in ("area_um2", "n_transcripts", "n_genes"):
        if col not in cells.columns:
            raise InputError(f"cells table lacks column '{col}'")
    n_assigned = int(cells["n_transcripts"].sum())
    area = cells["area_um2"].to_numpy(dtype=float)
    dens = cells["n_transcripts"].to_numpy(dtype=float) / np.where(area > 0, area, np.nan)
    med = lambda a: float(np.nanmedian(a)) if len(a) else 0.0  # noqa: E731
    return {
        "n_cells": int(len(cells)),
        "coverage_rate": n_assigned / n_transcripts if n_transcripts else 0.0,
        "median_area_um2": med(area),
        "mean_area_um2": float(area.mean()) if len(area) else 0.0,
        "median_transcripts_per_cell": med(cells["n_transcripts"].to_numpy(float)),
        "median_genes_per_cell": med(cells["n_genes"].to_numpy(float)),
        "median_transcript_density_per_um2": med(dens),
    }


def shape_descriptors(mask: np.ndarray) -> tuple[float, float, float]:
    """Eccentricity, elongation and convexity of one binary cell mask.

    Elongation is the ratio of the larger to the smaller eigenvalue of the covariance of the
    boundary pixel coordinates; convexity is the convex-hull perimeter over the perimeter.
    """
    from skimage.measure import perimeter, regionprops
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import find_boundaries

    mask = np.pad(mask.astype(bool), 1)
    prop = regionprops(mask.astype(np.uint8))[0]
    edge = np.argwhere(find_boundaries(mask, mode="inner"))
    if len(edge) >= 3:
        ev = np.sort(np.linalg.eigvalsh(np.cov(edge.T.astype(float))))
        elong = float(ev[1] / ev[0]) if ev[0] > 0 else float("inf")
    else:
        elong = 1.0
    per = perimeter(mask)
    hull_per = perimeter(convex_hull_image(mask))
    convexity = float(hull_per / per) if per > 0 else 1.0
    return float(prop.eccentricity), elong, convexity


def morphology_metrics(labels, block: int = 2048, max_cells: int = 5000) -> dict:
    """Median eccentricity, elongation and convexity over cells lying whole inside a block.

    Cells cut by a block edge are skipped (they are seen whole in no block only if larger than
    the block); at most ``max_cells`` cells are measured, in block order.
    """
    from skimage.measure import regionprops

    vals = []
    for rs, cs in _blocks(labels.shape, block):
        lab = np.asarray(labels[rs, cs])
        cut = set(np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]]).tolist())
        for p in regionprops(lab):
            at_edge = (
                (p.bbox[0] == 0 and rs.start > 0)
                or (p.bbox[1] == 0 and cs.start > 0)
                or (p.bbox[2] == lab.shape[0] and rs.stop < labels.shape[0])
                or (p.bbox[3] == lab.shape[1] and cs.stop < labels.shape[1])
            )
            if at_edge and p.label in cut:
                continue
            vals.append(shape_descriptors(p.image))
            if len(vals) >= max_cells:
                break
        if len(vals) >= max_cells:
            break
    if not vals:
        return {"n_measured": 0}
    v = np.asarray(vals, dtype=float)
    return {
        "n_measured": len(vals),
        "median_eccentricity": float(np.median(v[:, 0])),
        "median_elongation": float(np.median(v[:, 1])),
        "median_convexity": float(np.median(v[:, 2])),
    }


def profile_correlation(
    counts: pd.DataFrame, cell_types: pd.Series, reference: pd.DataFrame
) -> dict:
    """Pearson r of each cell type's mean expression profile with the single-cell reference's
    (UCS Fig. 5).

    ``counts``: cells x genes; ``cell_types``: type per cell (same index); ``reference``: types x
    genes mean profiles. Only shared genes and types are compared.
    """
    means = counts.groupby(cell_types.reindex(counts.index)).mean()
    return mean_profile_correlation(means, reference)


def mean_profile_correlation(means: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """Pearson r per cell type between two types x genes tables of mean profiles
    (shared genes/types).
    """
    genes = means.columns.intersection(reference.columns)
    if len(genes) < 2:
        raise InputError("expression reference shares fewer than 2 genes with the prediction")
    out = {}
    for t in means.index.intersection(reference.index):
        a, b = means.loc[t, genes].to_numpy(float), reference.loc[t, genes].to_numpy(float)
        out[str(t)] = (
            float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        )
    return {
        "per_type": out,
        "mean_r": float(np.nanmean(list(out.values()))) if out else float("nan"),
    }


def petukhov_correlation(
    genes: np.ndarray, a: np.ndarray, b: np.ndarray, min_transcripts: int = 10
) -> dict:
    """Petukhov et al. (Baysor) intersection/difference correlation between two segmentations.

    For each pair of overlapping cells (a cell of A and the B cell sharing most of its
    transcripts) the expression of the shared transcripts is correlated with that of the
    transcripts only in the A cell; low correlation means the extra part is a different cell.
    Returns the median over pairs with at least ``min_transcripts`` on each side.
    """
    df = pd.DataFrame({"g": pd.Categorical(genes), "a": np.asarray(a), "b": np.asarray(b)})
    df = df[df.a > 0]
    if df.empty:
        return {"n_pairs": 0, "median_r": float("nan")}
    pairs = df[df.b > 0].groupby(["a", "b"], observed=True).size().rename("n").reset_index()
    best = (
        pairs.sort_values(["a", "n"], ascending=[True, False])
        .drop_duplicates("a")
        .set_index("a")["b"]
    )
    df = df.assign(best=df.a.map(best).fillna(0).to_numpy())
    df["shared"] = df.b == df.best
    mat = df.groupby(["a", "shared", "g"], observed=False).size().unstack("g", fill_value=0)
    rs = []
    for cell in best.index:
        try:
            x, y = mat.loc[(cell, True)].to_numpy(float), mat.loc[(cell, False)].to_numpy(float)
        except KeyError:
            continue
        if (
            x.sum() >= min_transcripts
            and y.sum() >= min_transcripts
            and x.std() > 0
            and y.std() > 0
        ):
            rs.append(float(np.corrcoef(x, y)[0, 1]))
    return {"n_pairs": len(rs), "median_r": float(np.median(rs)) if rs else float("nan")}


def _expressed(cells: np.ndarray, genes: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Cells x genes 0/1 matrix: the gene (integer code) has a transcript in the cell
    (0 = no cell).
    """
    cells, genes = np.asarray(cells), np.asarray(genes, np.int64)
    sel = cells > 0
    _, ci = np.unique(cells[sel], return_inverse=True)
    m = sp.coo_matrix(
        (np.ones(int(sel.sum()), np.float32), (ci, genes[sel])),
        shape=(int(ci.max()) + 1 if len(ci) else 0, n_genes),
    ).tocsr()
    m.data[:] = 1.0
    return m


def exclusive_gene_pairs(
    nuclei: np.ndarray,
    genes: np.ndarray,
    *,
    min_expected: float = 3.0,
    max_ratio: float = 0.5,
    max_per_gene: int = 5,
    max_pairs: int = 50,
) -> list[tuple[int, int]]:
    """Gene pairs that rarely share a nucleus: MECR's marker pairs found without a reference.

    Nuclei are the compartment least mixed with neighbours, so two genes that share fewer
    nuclei than ``max_ratio`` times what independence predicts mark different cell types. A
    pair counts only where independence predicts at least ``min_expected`` shared nuclei (else
    absence is chance); the most exclusive come first, each gene in at most ``max_per_gene``.
    """
    genes = np.asarray(genes, np.int64)
    x = _expressed(nuclei, genes, int(genes.max()) + 1 if len(genes) else 0)
    n = x.shape[0]
    if n < 10:
        return []
    frac = np.asarray(x.mean(0)).ravel()
    cand = np.flatnonzero(frac * frac.max() * n >= min_expected)
    if len(cand) < 2:
        return []
    sub = x[:, cand]
    both = np.asarray((sub.T @ sub).todense())
    expected = n * np.outer(frac[cand], frac[cand])
    iu = np.triu_indices(len(cand), 1)
    ratio, exp = both[iu] / expected[iu], expected[iu]
    ok = (exp >= min_expected) & (ratio < max_ratio)
    order = np.lexsort((-exp[ok], ratio[ok]))
    a, b = cand[iu[0][ok][order]], cand[iu[1][ok][order]]
    pairs, used = [], np.zeros(int(genes.max()) + 1, np.int64)
    for i, j in zip(a, b, strict=True):
        if used[i] < max_per_gene and used[j] < max_per_gene:
            pairs.append((int(i), int(j)))
            used[i] += 1
            used[j] += 1
    return pairs[:max_pairs]


def marker_gene_pairs(markers: pd.DataFrame, gene_index: dict) -> list[tuple[int, int]]:
    """Pairs of marker genes of different cell types (table columns cell_type, gene)."""
    m = markers[markers.gene.isin(list(gene_index))]
    out = set()
    for a, ga in zip(m.cell_type, m.gene, strict=True):
        for b, gb in zip(m.cell_type, m.gene, strict=True):
            if a < b:
                i, j = sorted((gene_index[ga], gene_index[gb]))
                out.add((i, j))
    return sorted(out)


def mecr(cells: np.ndarray, genes: np.ndarray, pairs) -> dict:
    """Mutually exclusive co-expression rate (Hartman & Satija 2024), mean over gene pairs.

    For each pair of genes that mark different cell types: of the cells expressing either, the
    share expressing both. A cell that swallowed part of a neighbour of another type expresses
    both; lower is better. NaN without pairs.
    """
    pairs = list(pairs)
    if not pairs:
        return {"mecr": float("nan"), "n_pairs": 0}
    genes = np.asarray(genes, np.int64)
    x = _expressed(
        cells, genes, max(int(genes.max()) + 1 if len(genes) else 0, max(map(max, pairs)) + 1)
    ).tocsc()
    rates = []
    for a, b in pairs:
        ea = x[:, a].toarray().ravel() > 0
        eb = x[:, b].toarray().ravel() > 0
        either = int((ea | eb).sum())
        if either:
            rates.append((ea & eb).sum() / either)
    return {"mecr": float(np.mean(rates)) if rates else float("nan"), "n_pairs": len(rates)}


def nucleus_cytoplasm_r(
    cells: np.ndarray, in_nucleus: np.ndarray, genes: np.ndarray, min_transcripts: int = 10
) -> dict:
    """Reference-free purity: median Pearson r between each cell's nuclear and cytoplasmic profiles.

    Cytoplasm that belongs to the cell expresses what its nucleus does; cytoplasm taken from a
    neighbour of another type does not. Cells with fewer than ``min_transcripts`` on either side
    are left out (``n_cells`` says how many count).
    """
    cells = np.asarray(cells)
    sel = cells > 0
    df = pd.DataFrame(
        {"c": cells[sel], "n": np.asarray(in_nucleus, bool)[sel], "g": np.asarray(genes)[sel]}
    )
    if df.empty:
        return {"median_r": float("nan"), "n_cells": 0}
    mat = df.groupby(["c", "n", "g"]).size().unstack("g", fill_value=0)
    rs = []
    for c in df.c.unique():
        try:
            nuc, cyt = mat.loc[(c, True)].to_numpy(float), mat.loc[(c, False)].to_numpy(float)
        except KeyError:
            continue
        if (
            nuc.sum() >= min_transcripts
            and cyt.sum() >= min_transcripts
            and nuc.std() > 0
            and cyt.std() > 0
        ):
            rs.append(float(np.corrcoef(nuc, cyt)[0, 1]))
    return {"median_r": float(np.median(rs)) if rs else float("nan"), "n_cells": len(rs)}
