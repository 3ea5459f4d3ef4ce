"""UCS inference over a tile window, seamless by construction.

The window is processed in overlapping patches whose margins cover the network's receptive
field, and only each patch's centre is kept: the result equals running the network on the whole
window at once (no blending, no grid artefacts) while the network's activations stay at one
patch (the window keeps only the cell net's few reduced channels per bin). Cell
probabilities are accumulated per bin over the cells whose reach covers it; the background
probability of a bin is the mean of (1 - q_c) over those cells, and each bin takes the argmax
over background and cells.
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


def cell_priors(seeds: np.ndarray, reach_bins: int, tau: float, scaled: bool,
                growth_bins: float | None = None) -> list[CellPrior]:
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


def predict(model, device, binned: BinnedTile, priors: list[CellPrior], patch: int = 192,
            fg_threshold: float | None = 0.5, markers: np.ndarray | None = None, prior_weighted: bool = True,
            cell_background: bool = True, evidence: dict | None = None):
    """Foreground probability and cell argmax labels over the window's bin grid.

    Pass 1 runs the foreground net patch by patch (margins cover its receptive field) and keeps
    the foreground probability and the cell net's per-bin reduced features for the whole window.
    Everything after is per bin, so pass 2 needs no margins: each cell's expression profile is
    taken over its whole nucleus, whatever patch it falls in, then its cells are classified.
    ``markers`` (per-bin marker cell type, see features.marker_grid) feeds a marker-trained model.
    The paper's rule (eq. 5-6) is ``fg_threshold=None, prior_weighted=False``: each bin takes the
    argmax over the background and the cells' q; the defaults add a foreground gate and let the
    soft mask decide between cells that both claim a bin. ``cell_background=False`` drops the
    paper's background (a mean over every cell in reach, which in dense tissue outvotes the one
    cell a bin belongs to): the foreground net alone decides cell or background, the cells which.
    """
    import torch

    h, w = binned.shape
    m = model.foreground.receptive_radius + 1
    fg = np.zeros((h, w), np.float32)
    reduced = torch.zeros((1, model.cell.channels, h, w), device=device)
    rows, cols, genes = binned.by_row
    t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    tiles = [(r0, min(h, r0 + patch), c0, min(w, c0 + patch)) for r0 in range(0, h, patch) for c0 in range(0, w, patch)]
    with torch.no_grad():
        for r0, r1, c0, c1 in tiles:
            pr0, pr1, pc0, pc1 = max(0, r0 - m), min(h, r1 + m), max(0, c0 - m), min(w, c1 + m)
            lo, hi = np.searchsorted(rows, [pr0, pr1])
            sel = slice(lo, hi)
            inside = (cols[sel] >= pc0) & (cols[sel] < pc1)
            rr, cc, gg = t(rows[sel][inside] - pr0), t(cols[sel][inside] - pc0), t(genes[sel][inside])
            logits, feats = model.foreground(torch.zeros_like(rr), rr, cc, gg, (1, pr1 - pr0, pc1 - pc0))
            core = (slice(r0 - pr0, r1 - pr0), slice(c0 - pc0, c1 - pc0))
            fg[r0:r1, c0:c1] = torch.softmax(logits, 1)[0, 1][core].cpu().numpy()
            reduced[:, :, r0:r1, c0:c1] = model.cell.reduce(feats[:, :, core[0], core[1]])
        profiles = {}
        if model.cell.expression:
            for p in priors:
                r0, r1, c0, c1 = p.box
                profiles[p.cell_id] = model.cell.profiles(reduced[:, :, r0:r1, c0:c1], t(p.mask[None, None]))[0]
        marker_masks = None
        if model.cell.markers and markers is not None:
            marker_masks = {p.cell_id: cell_marker_mask(markers[p.box[0]:p.box[1], p.box[2]:p.box[3]], p.mask > 0.5)
                            for p in priors}
        bg_sum, n_cover, best_q, best_id = _classify_cells(model, reduced, priors, profiles, marker_masks, tiles, t,
                                                           prior_weighted, evidence)
    bg = np.where(n_cover > 0, bg_sum / np.maximum(n_cover, 1), 1.0)
    keep = (n_cover > 0) & (best_q > bg) if cell_background else n_cover > 0
    if fg_threshold is not None:
        # A bin joins a cell only where the foreground net also calls it cell: the cell net alone
        # is trained on nuclei versus far background and extends too freely in between.
        keep &= fg >= fg_threshold
    return fg, np.where(keep, best_id, 0)


def _classify_cells(model, reduced, priors, profiles, marker_masks, tiles, t, prior_weighted=True, evidence=None):
    """Per bin over the cells whose reach covers it: sum of (1 - q_c), count, best q and its cell."""
    import torch

    h, w = reduced.shape[2:]
    bg_sum = np.zeros((h, w), np.float32)
    n_cover = np.zeros((h, w), np.float32)
    best_q = np.zeros((h, w), np.float32)
    best_id = np.zeros((h, w), np.int64)
    for r0, r1, c0, c1 in tiles:
        hits = [p for p in priors if p.box[0] < r1 and p.box[1] > r0 and p.box[2] < c1 and p.box[3] > c0]
        if not hits:
            continue
        sm = np.zeros((len(hits), 1, r1 - r0, c1 - c0), np.float32)
        ev = np.zeros((len(hits), r1 - r0, c1 - c0), np.float32) if evidence is not None else None
        mk = np.zeros_like(sm) if marker_masks is not None else None
        cover = np.zeros((len(hits), r1 - r0, c1 - c0), bool)
        for k, p in enumerate(hits):
            a0, a1 = max(r0, p.box[0]), min(r1, p.box[1])
            b0, b1 = max(c0, p.box[2]), min(c1, p.box[3])
            src = (slice(a0 - p.box[0], a1 - p.box[0]), slice(b0 - p.box[2], b1 - p.box[2]))
            sm[k, 0, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = p.mask[src]
            if mk is not None:
                mk[k, 0, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = marker_masks[p.cell_id][src]
            cover[k, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = p.mask[src] > 0
            if ev is not None:
                ev[k, a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = evidence[p.cell_id][src]
        prof = torch.stack([profiles[p.cell_id] for p in hits]) if profiles else None
        logits = model.cell.classify(reduced[:, :, r0:r1, c0:c1], t(sm), None if mk is None else t(mk), prof)
        q = torch.softmax(logits, 1)[:, 1].cpu().numpy()
        q = np.where(cover, q, 0.0)
        bg_sum[r0:r1, c0:c1] = ((1.0 - q) * cover).sum(0)
        n_cover[r0:r1, c0:c1] = cover.sum(0)
        # Among cells that claim a bin, the soft mask (the nucleus-distance prior) decides:
        # a saturated cell net gives q ~ 1 to several neighbours, and an argmax over q alone
        # would split them arbitrarily.
        score = q * sm[:, 0] if prior_weighted else q
        if ev is not None:
            score = np.where(cover, np.log(np.maximum(score, 1e-12)) + ev, -np.inf)
        k_best = score.argmax(0)
        best_q[r0:r1, c0:c1] = np.take_along_axis(q, k_best[None], 0)[0]
        ids = np.array([p.cell_id for p in hits], np.int64)
        best_id[r0:r1, c0:c1] = ids[k_best]
    return bg_sum, n_cover, best_q, best_id


def expression_evidence(binned: BinnedTile, priors: list[CellPrior], gene_freq: np.ndarray, sigma: float,
                        alpha: float = 20.0) -> dict[int, np.ndarray]:
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
    pairs, counts = np.unique(np.stack([nuc[inside], binned.genes[inside]]), axis=1, return_counts=True)
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
    """Per cell: keep the piece holding its nucleus, close small gaps, fill holes; nuclei kept."""
    out = np.zeros_like(labels)
    ids = np.unique(seeds)
    ids = ids[ids > 0]
    for cid in ids:
        own = (labels == cid) | (seeds == cid)
        if not own.any():
            continue
        sl = ndi.find_objects(own.astype(np.int32))[0]
        sl = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in sl)
        piece = own[sl]
        comp, _ = ndi.label(piece)
        keep = np.isin(comp, np.unique(comp[(seeds[sl] == cid)]))
        keep &= comp > 0
        keep = ndi.binary_closing(keep, iterations=1) & ((labels[sl] == cid) | (labels[sl] == 0) | (seeds[sl] == cid))
        keep = ndi.binary_fill_holes(keep)
        region = out[sl]
        region[keep & (region == 0)] = cid
    out = np.where(seeds > 0, seeds, out)
    return out


def missing_cell_seeds(fg: np.ndarray, labels: np.ndarray, nuclei: np.ndarray, threshold: float,
                       min_area: int, counts: np.ndarray | None = None,
                       min_density: float | None = None) -> np.ndarray:
    """Seeds of cells whose nucleus is not seen: confident foreground outside every cell.

    With ``min_density`` (transcripts per bin) a candidate must also be as dense as a cell, not
    merely above the background: sparse tissue between cells is foreground yet holds no cell.
    """
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
