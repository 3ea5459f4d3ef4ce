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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


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

    def active(self, root) -> bool:
        """``enabled``, resolved: null follows the UCS coverage knob."""
        if self.enabled is not None:
            return bool(self.enabled)
        return root.cells.method == "ucs" and root.cells.ucs.coverage is not None

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
) -> tuple[np.ndarray, np.ndarray]:
    """Each transcript's cell after spillover, and which ones moved (see the module doc).

    ``reach_um``: the resolved reach (``SpilloverConfig.reach``; ``cfg.reach_um`` may be null).
    """
    genes = np.asarray(genes, np.int64)
    cell_id = np.asarray(cell_id, np.int64)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    compartment = nuclei.astype(np.int64)
    if seeds is not None:
        compartment = np.where(compartment > 0, compartment, seeds.astype(np.int64))
    home = compartment[rows, cols]
    g_all = max(int(n_genes), 1)
    keys, counts, cells, totals = _profiles(home, genes, g_all)
    alpha, uniform = cfg.prior_counts, cfg.prior_counts / g_all

    def log_p(cell, gene):
        n = _lookup(keys, counts, cell * g_all + gene)
        total = _lookup(cells, totals, cell)
        return np.log((n + uniform) / (total + alpha))

    cand = (cell_id > 0) & (home != cell_id)
    best = cell_id.copy()
    gain = np.zeros(len(cell_id))
    own = np.where(cand, log_p(cell_id, genes), 0.0)
    # candidates sorted by pixel row, so each cell finds those in its box by bisection
    idx = np.flatnonzero(cand)
    idx = idx[np.argsort(rows[idx], kind="stable")]
    by_row = rows[idx]
    lab = labels.astype(np.int64)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    compact = np.searchsorted(ids, lab) + 1
    compact[lab == 0] = 0
    half = int(np.ceil(reach_um / pixel_size_um))
    h, w = lab.shape
    # every cell in ID order, so ties go to the lowest ID in every tile alike
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
        j = j[dist[rows[j] - r0, cols[j] - c0] <= reach_um]
        if not len(j):
            continue
        g = log_p(np.full(len(j), cid), genes[j]) - own[j]
        win = g > gain[j]
        best[j[win]], gain[j[win]] = cid, g[win]
    moved = gain > np.log(cfg.min_ratio)
    out = np.where(moved, best, cell_id)
    if cfg.background_ratio is not None:
        # fits no cell: its own cell explains it this many times worse than uniform expression
        lost = cand & ~moved & (own < np.log(1.0 / g_all) - np.log(cfg.background_ratio))
        out = np.where(lost, 0, out)
        moved |= lost
    return out, moved
