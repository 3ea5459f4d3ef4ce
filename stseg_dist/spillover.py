"""Spillover: a transcript-level pass after the cells are drawn (``cells.spillover``).

Diffusion and imperfect borders put a neighbour's transcripts into a cell (the leakage that
Proseg models and cellAdmix / SPLIT remove). Here a transcript near a border whose gene its own
cell's expression explains much worse than a neighbouring cell's within ``reach_um`` moves to
that neighbour (or, optionally, to background when it fits no cell).

Tile-exact by construction: every input is the same in every tile that sees the transcript.
- A cell's expression profile is that of its **nucleus** (or nucleus-less seed): the transcripts
  on its nucleus pixels. Nuclei and seeds are global inputs painted identically into every window,
  and a cell that reaches within ``reach_um`` of a core transcript has its whole nucleus in the
  window: the halo holds twice the method's reach plus two nucleus diameters, and the nucleus lies
  at most reach + one nucleus diameter + ``reach_um`` away (``reach_um`` is validated against the
  nucleus diameter). The nucleus is also the part of a cell least mixed with its neighbours, so
  the profile is not itself made of spillover. The cytoplasm is not used: seen whole only where
  the labels of the whole cell are exact, which only the core guarantees.
- The neighbours are every cell of the labels within ``reach_um`` of the transcript's pixel
  (Euclidean); the one whose profile explains the gene best competes, ties to the lowest ID.
  Labels that near the core are what the neighbouring tile's core holds for a tile-exact method.
- Profiles are shrunk towards uniform expression by ``prior_counts`` pseudo-counts (nuclei hold
  few transcripts), so a gene a small nucleus happens to lack does not count as evidence alone.

A transcript on its own cell's nucleus or seed never moves, nor one outside every cell. With
``background_ratio`` a transcript that no neighbour takes and that its own cell explains that many
times worse than uniform expression goes to background.

``rule: diffusion`` replaces the fixed ratio with a posterior whose every number the chip decides
(cellAdmix's cell-type profiles, Proseg's diffusion; :class:`DiffusionState`, fitted chip-wide
before the cells pass by :func:`fit_types` and :func:`fit_decay`):

- Profiles are **cell types**, not single nuclei: a mixture of multinomials over the chip's
  nucleus counts, its number of types chosen by BIC; a cell's profile is its nucleus's
  posterior mix of the types. Cells grown from a seed (no nucleus) neither give nor take: a seed
  is the method's own guess from transcript density, no independent profile (on MERFISH U2-OS
  its two seed cells made most of the moves, 73% of them against the reference). Cells of one
  type never trade transcripts, and the profile is not the one nucleus the transcript's gene was
  counted in.
- The **prior** that a transcript at distance d outside a neighbour's labels came from it is
  ``s * exp(-d / scale)``, fitted by maximum likelihood to how neighbour-like (by the type
  likelihood ratio) transcripts are as a function of d, across the borders of the nuclei expanded
  by ``cells.expansion.distance_um``; a flat part ``c`` takes what does not decay (profiles that
  misfit a cytoplasm at any distance). Where the decay is not significant (likelihood-ratio test
  against a flat share, p above ``significance``) s is 0 and nothing moves: the chip shows no
  leakage that expression could undo.
- A transcript moves to the neighbour whose posterior beats its own cell's:
  ``prior_B * p(g | B) > (1 - sum of priors) * p(g | A)``.

``gate: decay`` lets ``rule: ratio`` run only where the chip shows leakage in the ratio rule's own
statistic (:class:`RatioGate`, fitted chip-wide before the cells pass by :func:`gate_histogram`
and :func:`fit_gate`): across the borders of the nuclei expanded by
``cells.expansion.distance_um``, the share of (transcript, neighbour) pairs whose neighbour
nucleus explains the gene ``min_ratio`` times better must fall with the distance to the
neighbour (``c + s * exp(-d / scale)`` beating a flat share at ``significance``). Diffusion
predicts that fall; misfit of a nucleus profile against a cytoplasm does not. Where the test
fails nothing moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: how a transcript's move is decided (see the module doc)
RULES = ("ratio", "diffusion")
#: whether the chip must show leakage before ``rule: ratio`` moves anything (see the module doc)
GATES = ("none", "decay")


@dataclass
class SpilloverConfig:
    # null: on exactly where UCS runs with cells.ucs.coverage (there it puts UCS below the
    # expansion frontier at every coverage on every crop measured); off elsewhere, since it lowers
    # the transcript ARI on CosMx fov2 and MERFISH U2-OS (docs/accuracy_frontier.md).
    enabled: bool | None = None
    # How far a neighbour's transcripts diffuse into a cell. null: nuclei.diameter_um, the
    # farthest the tiles keep exact (measured on xenium_breast_top's left half with UCS at
    # coverage 1.0: 2 / 4 / 8 µm gave MECR 0.0254 / 0.0226 / 0.0189, from 0.0297 without).
    reach_um: float | None = None
    # a transcript moves when its gene is this many times likelier under the neighbour's profile
    min_ratio: float = 10.0
    prior_counts: float = 10.0  # pseudo-counts of uniform expression added to every profile
    # A transcript no neighbour takes goes to background where its own cell explains its gene
    # this many times worse than the chip's average does (null: never). Measured: lowers ARI on
    # CosMx fov2 and MERFISH U2-OS at every ratio tried (docs/accuracy_frontier.md).
    background_ratio: float | None = None
    # ratio: a neighbour's nucleus explains the gene min_ratio times better (the earlier rule);
    # diffusion: the chip's cell types and diffusion decide (module doc). Measured
    # (docs/accuracy_frontier.md): diffusion keeps the transcript ARI on CosMx fov2 and MERFISH
    # U2-OS (nothing moves there: no significant decay), ratio lowers it; ratio lowers MECR more
    # on xenium_lung_preview, where the chip supports one type only and diffusion moves nothing.
    rule: str = "ratio"
    # diffusion: the p-value below which the chip's distance decay counts (likelihood-ratio test
    # against a flat neighbour share); 1 takes whatever decay is fitted
    significance: float = 0.001
    max_types: int = 12  # diffusion: the most cell types BIC may choose among (1 .. max_types)
    # ratio: none moves wherever the ratio passes; decay moves only on a chip whose passing share
    # falls with the distance to the neighbour (module doc). Measured (docs/accuracy_frontier.md):
    # decay shuts on CosMx fov2 and MERFISH U2-OS (ARI kept) and opens on xenium_breast_top and
    # MERSCOPE, but shuts on xenium_lung_preview, leaving UCS's knob above the frontier there
    gate: str = "none"

    def active(self, root) -> bool:
        """``enabled``, resolved: null follows the UCS coverage knob."""
        if self.enabled is not None:
            return bool(self.enabled)
        return root.cells.method == "ucs" and root.cells.ucs.coverage is not None

    def fitted(self) -> bool:
        """Whether the pass needs a chip-wide model fitted before the cells pass."""
        return self.rule == "diffusion" or self.gate == "decay"  # gate: the ratio rule only

    def reach(self, root) -> float:
        """``reach_um``, resolved."""
        return float(self.reach_um if self.reach_um is not None else root.nuclei.diameter_um)

    def validate(self, key: str, root) -> None:
        from .errors import ConfigError

        if self.reach_um is not None and not self.reach_um > 0:
            raise ConfigError(f"{key}.reach_um must be positive, got {self.reach_um}")
        if self.reach(root) > root.nuclei.diameter_um:
            raise ConfigError(
                f"{key}.reach_um ({self.reach_um}) must not exceed nuclei.diameter_um "
                f"({root.nuclei.diameter_um}): beyond it a neighbour's nucleus may lie outside "
                "the tile's halo"
            )
        if not self.min_ratio >= 1:
            raise ConfigError(f"{key}.min_ratio must be at least 1, got {self.min_ratio}")
        if not self.prior_counts > 0:
            raise ConfigError(f"{key}.prior_counts must be positive, got {self.prior_counts}")
        if self.background_ratio is not None and not self.background_ratio >= 1:
            raise ConfigError(
                f"{key}.background_ratio must be at least 1 or null, got {self.background_ratio}"
            )
        if self.rule not in RULES:
            raise ConfigError(f"{key}.rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0 < self.significance <= 1:
            raise ConfigError(f"{key}.significance must be in (0, 1], got {self.significance}")
        if not self.max_types >= 1:
            raise ConfigError(f"{key}.max_types must be at least 1, got {self.max_types}")
        if self.gate not in GATES:
            raise ConfigError(f"{key}.gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.fitted():
            from .tiling import halo_um

            # the decay's pseudo-cells near a core transcript must be whole in every window
            need = self.reach(root) + root.cells.expansion.distance_um + root.nuclei.diameter_um
            if halo_um(root, 0.0) < need:
                raise ConfigError(
                    f"{key}.{'rule diffusion' if self.rule == 'diffusion' else 'gate decay'} "
                    "needs a halo of at least reach_um + "
                    f"cells.expansion.distance_um + nuclei.diameter_um ({need} µm); "
                    f"tiling.halo_um is {root.tiling.halo_um}"
                )


def _profiles(home: np.ndarray, genes: np.ndarray, n_genes: int):
    """Sorted (cell * n_genes + gene) keys with counts, and sorted cells with their totals, of
    the transcripts on a nucleus or seed (``home``: its ID per transcript, 0 elsewhere).
    """
    sel = home > 0
    keys, counts = np.unique(home[sel] * n_genes + genes[sel], return_counts=True)
    cells, totals = np.unique(home[sel], return_counts=True)
    return keys, counts, cells, totals


def _lookup(sorted_keys, values, query):
    """values[key == query] or 0, vectorised."""
    if not len(sorted_keys):
        return np.zeros(len(query), values.dtype if len(values) else np.int64)
    k = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return np.where(sorted_keys[k] == query, values[k], 0)


def _compartments(nuclei: np.ndarray, seeds: np.ndarray | None) -> np.ndarray:
    """Nucleus IDs, with seeds where there is no nucleus."""
    compartment = nuclei.astype(np.int64)
    if seeds is not None:
        compartment = np.where(compartment > 0, compartment, seeds.astype(np.int64))
    return compartment


def neighbour_pairs(labels, rows, cols, cell_id, cand, reach_um: float, pixel_size_um: float):
    """(transcript, neighbour cell, distance in µm to that cell's labels) for every candidate
    transcript and every other cell of ``labels`` within ``reach_um`` of its pixel (Euclidean),
    in cell-ID order.
    """
    idx = np.flatnonzero(cand)
    idx = idx[np.argsort(rows[idx], kind="stable")]  # so each cell finds its box by bisection
    by_row = rows[idx]
    lab = labels.astype(np.int64)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    compact = np.searchsorted(ids, lab) + 1
    compact[lab == 0] = 0
    half = int(np.ceil(reach_um / pixel_size_um))
    h, w = lab.shape
    out_t, out_n, out_d = [], [], []
    for k, box in enumerate(ndi.find_objects(compact)):
        if box is None:
            continue
        cid = int(ids[k])
        r0, r1 = max(0, box[0].start - half), min(h, box[0].stop + half)
        c0, c1 = max(0, box[1].start - half), min(w, box[1].stop + half)
        lo, hi = np.searchsorted(by_row, [r0, r1])
        j = idx[lo:hi]
        j = j[(cols[j] >= c0) & (cols[j] < c1) & (cell_id[j] != cid)]
        if not len(j):
            continue
        dist = ndi.distance_transform_edt(compact[r0:r1, c0:c1] != k + 1) * pixel_size_um
        d = dist[rows[j] - r0, cols[j] - c0]
        near = d <= reach_um
        out_t.append(j[near])
        out_n.append(np.full(int(near.sum()), cid, np.int64))
        out_d.append(d[near])
    if not out_t:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_t), np.concatenate(out_n), np.concatenate(out_d)


def _best(t, n, score, n_tx: int):
    """Per transcript the neighbour of highest score (ties: the lowest ID) and that score
    (-inf where it has none).
    """
    best = np.zeros(n_tx, np.int64)
    top = np.full(n_tx, -np.inf)
    if len(t):
        order = np.lexsort((n, -score, t))
        first = np.ones(len(order), bool)
        first[1:] = t[order][1:] != t[order][:-1]
        order = order[first]
        best[t[order]], top[t[order]] = n[order], score[order]
    return best, top


# -- rule: diffusion (cell types and the chip's diffusion curve) ------------------------------
@dataclass
class DiffusionState:
    """The chip-wide model of ``rule: diffusion``: cell types and the diffusion prior."""

    ids: np.ndarray  # sorted compartment (nucleus or seed) IDs with counts
    weights: np.ndarray  # (len(ids), K) each compartment's posterior over the types
    log_profiles: np.ndarray  # (K, n_genes) log expression of each type
    mix: np.ndarray  # (K,) the types' shares (the profile of a cell with no counts)
    baseline: float = 0.0  # c: neighbour share that does not decay with distance
    amplitude: float = 0.0  # s: the prior at distance 0 (0 where the decay is not significant)
    scale_um: float = 1.0  # the decay length
    lrt: float = 0.0  # likelihood-ratio statistic of the decay against a flat share
    n_pairs: int = 0  # transcript-neighbour pairs the decay was fitted on
    # cells with an ID above it grew from a seed (no nucleus): they neither give nor take
    n_nuclei: int | None = None

    @property
    def n_types(self) -> int:
        return int(len(self.mix))

    def log_p(self, cells: np.ndarray, genes: np.ndarray) -> np.ndarray:
        """The log of p(gene | cell) under the cell's mix of types."""
        cells = np.asarray(cells, np.int64)
        k = np.minimum(np.searchsorted(self.ids, cells), max(len(self.ids) - 1, 0))
        found = (self.ids[k] == cells) if len(self.ids) else np.zeros(len(cells), bool)
        w = np.where(found[:, None], self.weights[k] if len(self.ids) else 0.0, self.mix[None])
        return np.log(np.einsum("ik,ik->i", w, np.exp(self.log_profiles[:, genes].T)))

    def prior(self, distance_um: np.ndarray) -> np.ndarray:
        return self.amplitude * np.exp(-np.asarray(distance_um) / self.scale_um)

    def describe(self) -> dict:
        return {
            "rule": "diffusion",
            "n_types": self.n_types,
            "amplitude": round(float(self.amplitude), 4),
            "scale_um": round(float(self.scale_um), 3),
            "baseline": round(float(self.baseline), 4),
            "lrt": round(float(self.lrt), 2),
            "n_pairs": int(self.n_pairs),
        }


def compartment_counts(data, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus * n_genes + gene, count) of the tile's core transcripts on a nucleus: summed over
    tiles, every nucleus's counts chip-wide, whatever the tiling. Seeds are left out: a method
    draws them (from transcript density), so they are no independent profile.
    """
    tx = data.transcripts
    home = data.nuclei.astype(np.int64)[tx.row, tx.col]
    sel = tx.in_core & (home > 0)
    return np.unique(home[sel] * n_genes + tx.gene[sel].astype(np.int64), return_counts=True)


def merge_counts(parts, n_genes: int):
    """Sorted compartment IDs and their (compartments x genes) sparse counts."""
    import scipy.sparse as sp

    keys = np.concatenate([k for k, _ in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([v for _, v in parts]) if parts else np.zeros(0, np.int64)
    keys, inv = np.unique(keys, return_inverse=True)
    vals = np.bincount(inv, vals, len(keys))
    ids, row = np.unique(keys // n_genes, return_inverse=True)
    counts = sp.csr_matrix((vals, (row, keys % n_genes)), shape=(len(ids), n_genes))
    return ids, counts


def _mixture(counts, k: int, iters: int = 100):
    """EM for a mixture of ``k`` multinomials (deterministic k-means++ start): log profiles,
    shares, per-row log posterior (unnormalised) and the log likelihood.
    """
    import scipy.sparse as sp

    counts = sp.csr_matrix(counts, dtype=float)
    n, g = counts.shape
    totals = np.asarray(counts.sum(1)).ravel()
    freq = (np.asarray(counts.sum(0)).ravel() + 1.0) / (counts.sum() + g)  # chip, smoothed
    x = sp.csr_matrix(counts.multiply(1.0 / np.maximum(totals, 1)[:, None]))  # stays sparse
    x_sq = np.asarray(x.multiply(x).sum(1)).ravel()
    rng = np.random.default_rng(0)
    centres = [x[int(np.argmax(totals))].toarray().ravel()]
    d2 = np.full(n, np.inf)
    for _ in range(1, k):
        c = centres[-1]
        d2 = np.minimum(d2, np.maximum(x_sq - 2 * (x @ c) + c @ c, 0))
        pick = rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)
        centres.append(x[int(pick)].toarray().ravel())
    prof = np.array(centres) + freq
    prof /= prof.sum(1, keepdims=True)
    share = np.full(k, 1.0 / k)
    for _ in range(iters):
        ll = counts @ np.log(prof).T + np.log(share)
        post = np.exp(ll - ll.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        share = post.mean(0) + 1e-12
        prof = np.asarray((counts.T @ post).T) + freq  # one pseudo-count, as the chip's genes
        prof /= prof.sum(1, keepdims=True)
    ll = np.asarray(counts @ np.log(prof).T) + np.log(share)
    top = ll.max(1, keepdims=True)
    loglik = float((top.ravel() + np.log(np.exp(ll - top).sum(1))).sum())
    return np.log(prof), share, ll, loglik


def fit_types(ids: np.ndarray, counts, max_types: int) -> DiffusionState:
    """Cell types of the chip's nuclei: the mixture of multinomials whose number of types
    (1 .. ``max_types``, at most one per compartment) has the lowest BIC.
    """
    n, g = counts.shape
    best = None
    for k in range(1, max(1, min(int(max_types), n)) + 1):
        log_prof, share, ll, loglik = _mixture(counts, k)
        bic = -2.0 * loglik + (k * (g - 1) + k - 1) * np.log(max(n, 1))
        if best is None or bic < best[0]:
            best = (bic, log_prof, share, ll)
    if best is None:  # no compartment holds a transcript: one flat type
        return DiffusionState(ids, np.ones((len(ids), 1)), np.full((1, g), -np.log(g)), np.ones(1))
    _, log_prof, share, ll = best
    post = np.exp(ll - ll.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    return DiffusionState(ids, post, log_prof, share)


#: the decay's histogram: distances in bins of one pixel, log likelihood ratios in 0.1 steps
LR_EDGES = np.linspace(-15.0, 15.0, 301)


def border_pairs(data, reach_um: float, expansion_um: float):
    """The tile's core (transcript, neighbour) pairs across the borders of the nuclei expanded by
    ``expansion_um``, which the chip-wide models are fitted on: (each transcript's nucleus, its
    pseudo-cell and gene; the pairs' transcript, neighbour and distance bin in pixels; the number
    of bins). A core transcript's neighbours are whole in every window (the halo is validated).
    """
    from skimage.segmentation import expand_labels

    tx = data.transcripts
    nuclei = data.nuclei.astype(np.int64)  # nuclei only, as the profiles and the types
    labels = expand_labels(nuclei, distance=expansion_um / data.pixel_size_um)
    home = nuclei[tx.row, tx.col]
    cell = labels[tx.row, tx.col].astype(np.int64)
    cand = tx.in_core & (cell > 0) & (home != cell)
    t, n, d = neighbour_pairs(labels, tx.row, tx.col, cell, cand, reach_um, data.pixel_size_um)
    n_d = int(np.ceil(reach_um / data.pixel_size_um)) + 1
    d_bin = np.minimum(np.round(d / data.pixel_size_um).astype(np.int64), n_d - 1)
    return home, cell, tx.gene.astype(np.int64), t, n, d_bin, n_d


def decay_histogram(
    data, state: DiffusionState, reach_um: float, expansion_um: float
) -> np.ndarray:
    """Counts of (distance to a neighbour's labels in pixels, log likelihood ratio of the
    neighbour's profile over the own cell's) for the tile's core transcripts, on the nuclei
    expanded by ``expansion_um`` (labels a core transcript's neighbours share with every tile:
    the halo holds twice the cell diameter plus a nucleus).
    """
    _, cell, genes, t, n, d_bin, n_d = border_pairs(data, reach_um, expansion_um)
    lr = state.log_p(n, genes[t]) - state.log_p(cell[t], genes[t])
    lr_bin = np.clip(np.round((lr - LR_EDGES[0]) / 0.1).astype(np.int64), 0, len(LR_EDGES) - 1)
    return np.bincount(d_bin * len(LR_EDGES) + lr_bin, minlength=n_d * len(LR_EDGES)).reshape(
        n_d, len(LR_EDGES)
    )


def _decay_share(p, d: np.ndarray) -> np.ndarray:
    """The share ``c + s exp(-d / scale)`` at distances ``d`` (µm), kept inside (0, 1)."""
    c, s, scale = p
    return np.clip(c + s * np.exp(-d / scale), 1e-9, 1 - 1e-9)


def _fit_decay_share(nll, c_flat: float, nll_flat: float, pixel_size_um: float, reach_um: float):
    """Maximum likelihood of (c, s, scale) under ``nll`` from a few starting scales, started at
    the flat share ``c_flat``: (c, s, scale, likelihood-ratio statistic against the flat fit).
    """
    from scipy.optimize import minimize

    bounds = [(0.0, 1.0), (0.0, 1.0), (pixel_size_um / 2, reach_um)]
    best = min(
        (minimize(nll, [c_flat, 0.1, scale], bounds=bounds) for scale in (0.5, 1.0, 2.0, 4.0)),
        key=lambda r: r.fun,
    )
    c, s, scale = (float(v) for v in best.x)
    return c, s, scale, max(0.0, 2.0 * float(nll_flat - best.fun))


def fit_decay(
    hist: np.ndarray, pixel_size_um: float, reach_um: float, significance: float
) -> tuple[float, float, float, float]:
    """Maximum likelihood of the neighbour share ``c + s exp(-d / scale)`` given each pair's
    likelihood ratio (a pair is neighbour-born with that share): (c, s, scale, LRT). ``s`` is 0
    where the decay does not beat a flat share at ``significance`` (chi-squared, 2 d.o.f.).
    """
    from scipy.optimize import minimize
    from scipy.stats import chi2

    d_i, l_j = np.nonzero(hist)
    w = hist[d_i, l_j].astype(float)
    if not len(w):
        return 0.0, 0.0, 1.0, 0.0
    d = d_i * pixel_size_um
    ratio = np.exp(LR_EDGES[l_j])

    def nll(p):
        share = _decay_share(p, d)
        return -(w * np.log(share * ratio + 1 - share)).sum()

    flat = minimize(lambda p: nll([p[0], 0.0, 1.0]), [0.2], bounds=[(0.0, 1.0)])
    c, s, scale, lrt = _fit_decay_share(nll, float(flat.x[0]), flat.fun, pixel_size_um, reach_um)
    if significance < 1 and lrt < chi2.ppf(1.0 - significance, 2):
        c, s = float(flat.x[0]), 0.0  # no decay the chip tells from a flat share: no leakage
    return c, s, scale, lrt


# -- gate: decay (the ratio rule's own statistic against the distance) ------------------------
@dataclass
class RatioGate:
    """The chip-wide decision of ``gate: decay``: does the ratio rule's passing share decay?"""

    baseline: float = 0.0  # c: passing share that does not decay with distance
    amplitude: float = 0.0  # s: the decaying part at distance 0
    scale_um: float = 1.0
    lrt: float = 0.0  # likelihood-ratio statistic of the decay against a flat share
    n_pairs: int = 0
    open: bool = False  # the decay is significant: the ratio rule runs

    def describe(self) -> dict:
        return {
            "rule": "ratio",
            "gate": "decay",
            "open": bool(self.open),
            "amplitude": round(float(self.amplitude), 4),
            "scale_um": round(float(self.scale_um), 3),
            "baseline": round(float(self.baseline), 4),
            "lrt": round(float(self.lrt), 2),
            "n_pairs": int(self.n_pairs),
        }


def _ratio_log_p(home: np.ndarray, genes: np.ndarray, n_genes: int, prior_counts: float):
    """The ratio rule's log p(gene | cell) from the transcripts on each cell's compartment."""
    g_all = max(int(n_genes), 1)
    keys, counts, cells, totals = _profiles(home, genes, g_all)
    uniform = prior_counts / g_all

    def log_p(cell, gene):
        k = _lookup(keys, counts, cell * g_all + gene)
        total = _lookup(cells, totals, cell)
        return np.log((k + uniform) / (total + prior_counts))

    return log_p


def gate_histogram(
    data, cfg: SpilloverConfig, n_genes: int, reach_um: float, expansion_um: float
) -> np.ndarray:
    """(distance to a neighbour's labels in pixels) x (ratio below / at least ``min_ratio``)
    counts of the tile's core (transcript, neighbour) pairs, on the nuclei expanded by
    ``expansion_um``, with the ratio rule's nucleus profiles. Every nucleus whose pseudo-cell
    lies within reach of a core transcript is whole in the window (the halo is validated), so
    the sum over tiles is the same at any tiling.
    """
    home, cell, genes, t, n, d_bin, n_d = border_pairs(data, reach_um, expansion_um)
    log_p = _ratio_log_p(home, genes, n_genes, cfg.prior_counts)
    passes = (log_p(n, genes[t]) - log_p(cell[t], genes[t])) > np.log(cfg.min_ratio)
    return np.bincount(d_bin * 2 + passes, minlength=n_d * 2).reshape(n_d, 2)


def fit_gate(
    hist: np.ndarray, pixel_size_um: float, reach_um: float, significance: float
) -> RatioGate:
    """Maximum likelihood (binomial per distance bin) of the passing share
    ``c + s exp(-d / scale)`` against a flat share; open where the decay beats the flat share at
    ``significance`` (chi-squared, 2 d.o.f.).
    """
    from scipy.stats import chi2

    hist = np.asarray(hist, float)
    total = float(hist.sum())
    if not total or not hist[:, 1].sum() or not hist[:, 0].sum():
        return RatioGate(n_pairs=int(total))
    d = np.arange(len(hist)) * pixel_size_um
    fail, win = hist[:, 0], hist[:, 1]

    def nll(p):
        share = _decay_share(p, d)
        return -(win * np.log(share) + fail * np.log1p(-share)).sum()

    c0 = float(win.sum() / total)  # the flat share's maximum likelihood
    c, s, scale, lrt = _fit_decay_share(nll, c0, nll([c0, 0.0, 1.0]), pixel_size_um, reach_um)
    is_open = s > 0 and (significance >= 1 or lrt >= chi2.ppf(1.0 - significance, 2))
    if not is_open:
        c, s = c0, 0.0
    return RatioGate(c, s, scale, lrt, int(total), bool(is_open))


# -- the pass --------------------------------------------------------------------------------
def reassign(
    labels: np.ndarray,
    nuclei: np.ndarray,
    seeds: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
    genes: np.ndarray,
    cell_id: np.ndarray,
    n_genes: int,
    pixel_size_um: float,
    cfg: SpilloverConfig,
    reach_um: float,
    state: DiffusionState | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each transcript's cell after spillover, and which ones moved (see the module doc).

    ``reach_um``: the resolved reach (``SpilloverConfig.reach``; ``cfg.reach_um`` may be null).
    ``state``: the chip's model, required by ``rule: diffusion`` (a :class:`DiffusionState`)
    and by ``gate: decay`` (a :class:`RatioGate`).
    """
    genes = np.asarray(genes, np.int64)
    cell_id = np.asarray(cell_id, np.int64)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if cfg.rule == "ratio" and cfg.gate == "decay":
        if state is None:
            raise ValueError("cells.spillover.gate 'decay' needs the chip's RatioGate")
        if not state.open:  # the chip shows no leakage in the ratio's own statistic
            return cell_id.copy(), np.zeros(len(cell_id), bool)
    home = _compartments(nuclei, seeds)[rows, cols]
    cand = (cell_id > 0) & (home != cell_id)
    t, n, d = neighbour_pairs(labels, rows, cols, cell_id, cand, reach_um, pixel_size_um)
    if cfg.rule == "diffusion":
        if state is None:
            raise ValueError("cells.spillover.rule 'diffusion' needs the chip's DiffusionState")
        if state.n_nuclei is not None:  # seed-grown cells neither give nor take
            cand &= cell_id <= state.n_nuclei
            keep = cand[t] & (n <= state.n_nuclei)
            t, n, d = t[keep], n[keep], d[keep]
        own = np.where(cand, state.log_p(cell_id, genes), 0.0)
        prior = state.prior(d)
        rest = 1.0 - np.bincount(t, prior, len(cell_id))
        with np.errstate(divide="ignore"):
            score = (
                np.log(prior)
                + state.log_p(n, genes[t])
                - own[t]
                - np.log(np.maximum(rest[t], 1e-9))
            )
        best, top = _best(t, n, score, len(cell_id))
        moved = top > 0.0
    else:
        log_p = _ratio_log_p(home, genes, n_genes, cfg.prior_counts)
        own = np.where(cand, log_p(cell_id, genes), 0.0)
        best, top = _best(t, n, log_p(n, genes[t]) - own[t], len(cell_id))
        moved = top > np.log(cfg.min_ratio)
    out = np.where(moved, best, cell_id)
    if cfg.background_ratio is not None:
        # fits no cell: its own cell explains it this many times worse than uniform expression
        lost = (
            cand
            & ~moved
            & (own < np.log(1.0 / max(int(n_genes), 1)) - np.log(cfg.background_ratio))
        )
        out = np.where(lost, 0, out)
        moved |= lost
    return out, moved
