"""UCS inference over a tile window, seamless by construction.

The foreground net runs over the window in overlapping patches whose margins cover its
receptive field, and only each patch's centre is kept: the result equals running it on the whole
window at once (no blending, no grid artefacts) while its activations stay at one patch (the
window keeps only the cell net's few reduced channels per bin). The cell net's head is per bin,
so each cell is scored over its own box; the background probability of a bin is the mean of
(1 - q_c) over the cells that reach it, and each bin takes the argmax over background and cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..common.bins import BinnedTile
from .features import cell_marker_mask
from .softmask import softmask


@dataclass
class CellPrior:
    cell_id: int
    box: tuple[int, int, int, int]  # r0, r1, c0, c1 on the bin grid
    mask: np.ndarray  # soft mask over the box


def cell_priors(
    seeds: np.ndarray, reach_bins: int, tau: float, scaled: bool, growth_bins: float | None = None
) -> list[CellPrior]:
    """Soft masks of every nucleus (or seed) in the window, over its box grown by the reach.

    With ``growth_bins`` the mask is zero beyond that (direction-scaled) distance from the nucleus
    outline: a cell may not claim a whole neighbour whose nucleus went unseen, which leaves that
    neighbour to the missing-cell search instead of doubling this cell.
    """
    h, w = seeds.shape
    out = []
    ids = np.unique(seeds)
    ids = ids[ids > 0]
    if not len(ids):
        return out
    lab = np.searchsorted(ids, seeds) + 1
    lab[seeds == 0] = 0
    for k, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        r0, r1 = max(0, sl[0].start - reach_bins), min(h, sl[0].stop + reach_bins)
        c0, c1 = max(0, sl[1].start - reach_bins), min(w, sl[1].stop + reach_bins)
        m = lab[r0:r1, c0:c1] == k + 1
        sm = softmask(m, tau, scaled)
        if growth_bins is not None:
            sm = np.where(sm >= 1.0 / (1.0 + np.exp(growth_bins / tau)), sm, 0.0).astype(np.float32)
        out.append(CellPrior(int(ids[k]), (r0, r1, c0, c1), sm))
    return out


def foreground_pass(
    model, device, binned: BinnedTile, patch: int = 192
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability (H, W) and the cell net's reduced features (C, H, W) of a window.

    The foreground net runs patch by patch with margins that cover its receptive field, and only
    each patch's centre is kept, so the result equals one run over the whole window.
    """
    import torch

    h, w = binned.shape
    m = model.foreground.receptive_radius + 1
    fg = np.zeros((h, w), np.float32)
    reduced = np.zeros((model.cell.channels, h, w), np.float32)
    rows, cols, genes = binned.by_row
    t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    with torch.inference_mode():
        for r0 in range(0, h, patch):
            for c0 in range(0, w, patch):
                r1, c1 = min(h, r0 + patch), min(w, c0 + patch)
                pr0, pr1, pc0, pc1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
                lo, hi = np.searchsorted(rows, [pr0, pr1])
                inside = (cols[lo:hi] >= pc0) & (cols[lo:hi] < pc1)
                rr, cc, gg = (
                    t(rows[lo:hi][inside] - pr0),
                    t(cols[lo:hi][inside] - pc0),
                    t(genes[lo:hi][inside]),
                )
                logits, feats = model.foreground(
                    torch.zeros_like(rr), rr, cc, gg, (1, pr1 - pr0, pc1 - pc0)
                )
                core = (slice(r0 - pr0, r1 - pr0), slice(c0 - pc0, c1 - pc0))
                fg[r0:r1, c0:c1] = torch.softmax(logits, 1)[0, 1][core].cpu().numpy()
                reduced[:, r0:r1, c0:c1] = (
                    model.cell.reduce(feats[:, :, core[0], core[1]])[0].cpu().numpy()
                )
    return fg, reduced


def empty_field_foreground(model, device) -> float:
    """The foreground net's p for a bin with no transcript anywhere in its receptive field: what
    it says in the absence of evidence (a constant of the trained weights).
    """
    import torch

    side = 2 * model.foreground.receptive_radius + 3
    none = torch.zeros(0, dtype=torch.int64, device=device)
    with torch.inference_mode():
        logits, _ = model.foreground(none, none, none, none, (1, side, side))
    return float(torch.softmax(logits, 1)[0, 1, side // 2, side // 2])


def coverage(priors: list[CellPrior], shape: tuple[int, int]) -> np.ndarray:
    """Bins that some cell's soft mask reaches: where a cell may grow at all."""
    out = np.zeros(shape, bool)
    for p in priors:
        r0, r1, c0, c1 = p.box
        out[r0:r1, c0:c1] |= p.mask > 0
    return out


def predict(
    model,
    device,
    binned: BinnedTile,
    priors: list[CellPrior],
    patch: int = 192,
    fg_threshold: float | None = 0.5,
    markers: np.ndarray | None = None,
    prior_weighted: bool = True,
    cell_background: bool = True,
    evidence: dict | None = None,
):
    """Foreground probability and cell argmax labels over the window's bin grid.

    The foreground pass keeps the window's foreground probability and the cell net's reduced
    features; the cell net's head is per bin, so each cell is then scored over its own box.
    ``markers`` (per-bin marker cell type, see features.marker_grid) feeds a marker-trained model.
    The paper's rule (eq. 5-6) is ``fg_threshold=None, prior_weighted=False``: each bin takes the
    argmax over the background and the cells' q; the defaults add a foreground gate and let the
    soft mask decide between cells that both claim a bin. ``cell_background=False`` drops the
    paper's background (a mean over every cell in reach, which in dense tissue outvotes the one
    cell a bin belongs to): the foreground net alone decides cell or background, the cells which.
    """
    fg, reduced = foreground_pass(model, device, binned, patch)
    marker_masks = None
    if model.cell.markers and markers is not None:
        marker_masks = {
            p.cell_id: cell_marker_mask(
                markers[p.box[0] : p.box[1], p.box[2] : p.box[3]], p.mask > 0.5
            )
            for p in priors
        }
    bg_sum, n_cover, best_q, best_id = _classify_cells(
        model.cell, reduced, priors, marker_masks, prior_weighted, evidence
    )
    bg = np.where(n_cover > 0, bg_sum / np.maximum(n_cover, 1), 1.0)
    keep = (n_cover > 0) & (best_q > bg) if cell_background else n_cover > 0
    if fg_threshold is not None:
        # A bin joins a cell only where the foreground net also calls it cell: the cell net alone
        # is trained on nuclei versus far background and extends too freely in between.
        keep &= fg >= fg_threshold
    return fg, np.where(keep, best_id, 0)


def _head_terms(cell_net):
    """The cell net's 1x1 head as the difference of its two logits:
    (w_mask, w_profile, w_marker, bias).

    Every input of the head is a per-bin product with the cell's soft mask (or its marker mask),
    so q_c = sigmoid(sm_c * (w_mask . r + (w_profile * profile_c) . r) + w_marker * mk_c + bias)
    per bin, with r the window's reduced features: each cell is scored over its own box only,
    not over every patch it touches.
    """
    w = cell_net.head.weight.detach().cpu().numpy()[:, :, 0, 0].astype(np.float64)
    b = cell_net.head.bias.detach().cpu().numpy().astype(np.float64)
    d = w[1] - w[0]
    c = cell_net.channels
    return (
        d[:c],
        (d[c : 2 * c] if cell_net.expression else None),
        (d[-1] if cell_net.markers else None),
        b[1] - b[0],
    )


def _classify_cells(
    cell_net, reduced, priors, marker_masks=None, prior_weighted=True, evidence=None
):
    """Per bin over the cells whose reach covers it: sum of (1 - q_c), count, best q and its cell.

    ``reduced`` (C, H, W): the cell net's per-bin features. Among cells that claim a bin the one
    with the highest q times its soft mask wins (ties: the lower ID), so a saturated cell net that
    gives q ~ 1 to several neighbours does not split them arbitrarily.
    """
    h, w = reduced.shape[1:]
    w_mask, w_profile, w_marker, bias = _head_terms(cell_net)
    base = np.tensordot(w_mask, reduced, axes=1)  # (H, W): the mask term's per-bin weight
    bg_sum = np.zeros((h, w), np.float64)
    n_cover = np.zeros((h, w), np.float32)
    best_q = np.zeros((h, w), np.float32)
    best_score = np.full((h, w), -np.inf)
    best_id = np.zeros((h, w), np.int64)
    for p in priors:
        r0, r1, c0, c1 = p.box
        sm = p.mask.astype(np.float64)
        cover = sm > 0
        slope = base[r0:r1, c0:c1]
        if w_profile is not None:
            box = reduced[:, r0:r1, c0:c1]
            inside = sm > 0.5
            profile = box[:, inside].mean(1) if inside.any() else np.zeros(len(w_profile))
            slope = slope + np.tensordot(w_profile * profile, box, axes=1)
        logit = sm * slope + bias
        if w_marker is not None and marker_masks is not None:
            logit = logit + w_marker * marker_masks[p.cell_id]
        with np.errstate(over="ignore"):  # exp(-logit) overflows to inf: q is then exactly 0
            q = np.where(cover, 1.0 / (1.0 + np.exp(-logit)), 0.0)
        score = q * sm if prior_weighted else q
        if evidence is not None:
            score = np.log(np.maximum(score, 1e-12)) + evidence[p.cell_id]
        score = np.where(cover, score, -np.inf)
        win = score > best_score[r0:r1, c0:c1]
        best_score[r0:r1, c0:c1] = np.where(win, score, best_score[r0:r1, c0:c1])
        best_q[r0:r1, c0:c1] = np.where(win, q, best_q[r0:r1, c0:c1])
        best_id[r0:r1, c0:c1] = np.where(win, p.cell_id, best_id[r0:r1, c0:c1])
        bg_sum[r0:r1, c0:c1] += (1.0 - q) * cover
        n_cover[r0:r1, c0:c1] += cover
    return bg_sum.astype(np.float32), n_cover, best_q, best_id


def expression_evidence(
    binned: BinnedTile,
    priors: list[CellPrior],
    gene_freq: np.ndarray,
    sigma: float,
    alpha: float = 20.0,
) -> dict[int, np.ndarray]:
    """Per cell, over its box: how much better its own nucleus's expression explains the nearby
    transcripts than the chip's average does (a Gaussian-weighted sum of log-likelihood ratios).

    Each nucleus's profile is its transcripts' genes, shrunk towards the chip's gene frequencies
    by ``alpha`` pseudo-counts (nuclei hold few transcripts). Where cells compete for a bin, the
    one whose nucleus expresses what lies there wins more often: a neighbour of another type
    stops taking it by distance alone. Cells whose nucleus holds no transcripts get none.
    """
    from scipy.ndimage import gaussian_filter

    n_genes = len(gene_freq)
    base = np.log(gene_freq)
    nuc = binned.nuclei[binned.rows, binned.cols] if len(binned.rows) else np.zeros(0, np.int64)
    inside = nuc > 0
    # (cell, gene) pairs of the nuclear transcripts, sorted by cell: each cell's genes are one slice
    pairs, counts = np.unique(
        np.stack([nuc[inside], binned.genes[inside]]), axis=1, return_counts=True
    )
    rows, cols, genes = binned.by_row
    out = {}
    for p in priors:
        r0, r1, c0, c1 = p.box
        grid = np.zeros((r1 - r0, c1 - c0), np.float32)
        a, b = np.searchsorted(pairs[0], [p.cell_id, p.cell_id + 1])
        if b > a:
            n = np.zeros(n_genes)
            n[pairs[1][a:b]] = counts[a:b]
            lr = np.log((n + alpha * gene_freq) / (n.sum() + alpha)) - base
            lo, hi = np.searchsorted(rows, [r0, r1])
            sel = (cols[lo:hi] >= c0) & (cols[lo:hi] < c1)
            np.add.at(grid, (rows[lo:hi][sel] - r0, cols[lo:hi][sel] - c0), lr[genes[lo:hi][sel]])
            grid = gaussian_filter(grid, sigma, mode="constant") * (2 * np.pi * sigma**2)
        out[p.cell_id] = grid
    return out


def postprocess(labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Per cell: keep the piece holding its nucleus, close small gaps, fill holes; nuclei kept.

    Each cell is worked on inside its own box (its labels and its seed together, found for all
    cells in one pass), so the cost follows the cells, not cells x window.
    """
    out = np.zeros_like(labels)
    ids = np.unique(seeds)
    ids = ids[ids > 0]
    if not len(ids):
        return out

    def compact(a):  # 1 + index into ids; 0 for background and for IDs that are not seeds
        k = np.searchsorted(ids, a)
        hit = (a > 0) & (k < len(ids)) & (ids[np.minimum(k, len(ids) - 1)] == a)
        return np.where(hit, k + 1, 0)

    boxes = zip(
        ndi.find_objects(compact(labels), len(ids)),
        ndi.find_objects(compact(seeds), len(ids)),
        strict=True,
    )
    h, w = labels.shape
    for cid, (lb, sb) in zip(ids, boxes, strict=True):
        parts = [b for b in (lb, sb) if b is not None]
        if not parts:
            continue
        sl = (
            slice(
                max(0, min(b[0].start for b in parts) - 2),
                min(h, max(b[0].stop for b in parts) + 2),
            ),
            slice(
                max(0, min(b[1].start for b in parts) - 2),
                min(w, max(b[1].stop for b in parts) + 2),
            ),
        )
        lab, seed = labels[sl], seeds[sl]
        comp, _ = ndi.label((lab == cid) | (seed == cid))
        keep = np.isin(comp, np.unique(comp[seed == cid]))
        keep &= comp > 0
        keep = ndi.binary_closing(keep, iterations=1) & ((lab == cid) | (lab == 0) | (seed == cid))
        keep = ndi.binary_fill_holes(keep)
        region = out[sl]
        region[keep & (region == 0)] = cid
    return np.where(seeds > 0, seeds, out)


def missing_cell_seeds(
    fg: np.ndarray,
    labels: np.ndarray,
    nuclei: np.ndarray,
    threshold: float,
    min_area: int,
    counts: np.ndarray | None = None,
    min_density: float | None = None,
    smooth_bins: float = 0.0,
) -> np.ndarray:
    """Seeds of cells whose nucleus is not seen: confident foreground outside every cell.

    With ``min_density`` (transcripts per bin) a candidate must also be as dense as a cell, not
    merely above the background: sparse tissue between cells is foreground yet holds no cell.
    ``smooth_bins``: the foreground is smoothed by a Gaussian of this sigma before the threshold,
    so a cell body the net calls confidently cell only on average is not broken into specks.
    """
    if smooth_bins:
        fg = ndi.gaussian_filter(fg, smooth_bins)
    cand = (fg > threshold) & (labels == 0) & (nuclei == 0)
    cand = ndi.binary_opening(cand, iterations=2)  # no slivers left between grown cells
    cand = ndi.binary_closing(cand, iterations=1) & (labels == 0)
    comp, n = ndi.label(cand)
    if n == 0:
        return np.zeros(fg.shape, np.int64)
    near_nucleus = ndi.binary_dilation(nuclei > 0, iterations=1)
    touch = np.unique(comp[near_nucleus & (comp > 0)])
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    keep = sizes >= min_area
    if min_density is not None:
        totals = np.bincount(comp.ravel(), weights=counts.ravel(), minlength=n + 1)
        keep &= totals >= min_density * sizes
    keep[0] = False
    keep[touch] = False
    lut = np.zeros(n + 1, np.int64)
    lut[keep] = np.arange(1, keep.sum() + 1)
    return lut[comp]
