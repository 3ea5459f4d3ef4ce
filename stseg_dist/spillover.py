"""Spillover: a transcript-level pass after the cells are drawn (``cells.spillover``).

Diffusion and imperfect borders put a neighbour's transcripts into a cell (the leakage that
Proseg models and cellAdmix / SPLIT remove). Here a transcript near a border whose gene its own
cell's expression explains much worse than a neighbouring cell's within ``reach_um`` moves to
that neighbour.

Tile-exact by construction: every input is the same in every tile that sees the transcript.
- A cell's expression profile is that of its **nucleus** (or nucleus-less seed): the transcripts
  on its nucleus pixels. Nuclei and seeds are global inputs painted identically into every window,
  and a cell that reaches within ``reach_um`` of a core transcript has its whole nucleus in the
  window: the halo holds twice the method's reach plus two nucleus diameters, and the nucleus lies
  at most reach + one nucleus diameter + ``reach_um`` away (``reach_um`` is validated against the
  nucleus diameter). The nucleus is also the part of a cell least mixed with its neighbours, so
  the profile is not itself made of spillover. The cytoplasm is not used: seen whole only where
  the labels of the whole cell are exact, which only the core guarantees.
- The neighbours are the cells in the labels within ``reach_um`` of the transcript's pixel (a
  square of that half-side), at most two of them (the highest and lowest other IDs there); labels
  that near the core are what the neighbouring tile's core holds for a tile-exact method.
- Profiles are shrunk towards uniform expression by ``prior_counts`` pseudo-counts (nuclei hold
  few transcripts), so a gene a small nucleus happens to lack does not count as evidence alone.

A transcript on its own cell's nucleus or seed never moves, nor one outside every cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class SpilloverConfig:
    # Off unless it wins on every crop it applies to (see docs/accuracy_frontier.md).
    enabled: bool = False
    reach_um: float = 2.0  # how far a neighbour's transcripts diffuse into a cell
    # a transcript moves when its gene is this many times likelier under the neighbour's profile
    min_ratio: float = 10.0
    prior_counts: float = 10.0  # pseudo-counts of uniform expression added to every profile

    def validate(self, key: str, root) -> None:
        from .errors import ConfigError

        if not self.reach_um > 0:
            raise ConfigError(f"{key}.reach_um must be positive, got {self.reach_um}")
        if self.reach_um > root.nuclei.diameter_um:
            raise ConfigError(
                f"{key}.reach_um ({self.reach_um}) must not exceed nuclei.diameter_um "
                f"({root.nuclei.diameter_um}): beyond it a neighbour's nucleus may lie outside "
                "the tile's halo"
            )
        if not self.min_ratio >= 1:
            raise ConfigError(f"{key}.min_ratio must be at least 1, got {self.min_ratio}")
        if not self.prior_counts > 0:
            raise ConfigError(f"{key}.prior_counts must be positive, got {self.prior_counts}")


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
) -> tuple[np.ndarray, np.ndarray]:
    """Each transcript's cell after spillover, and which ones moved (see the module doc)."""
    genes = np.asarray(genes, np.int64)
    cell_id = np.asarray(cell_id, np.int64)
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

    half = max(1, round(cfg.reach_um / pixel_size_um))
    size = 2 * half + 1
    lab = labels.astype(np.int64)
    big = np.iinfo(np.int64).max
    hi = ndi.maximum_filter(lab, size=size, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(lab > 0, lab, big), size=size, mode="constant", cval=big)
    cand = (cell_id > 0) & (home != cell_id)
    best = cell_id.copy()
    gain = np.zeros(len(cell_id))
    own = np.where(cand, log_p(cell_id, genes), 0.0)
    for other in (hi[rows, cols], lo[rows, cols]):
        ok = cand & (other > 0) & (other != big) & (other != cell_id)
        if not ok.any():
            continue
        g = np.full(len(cell_id), -np.inf)
        g[ok] = log_p(other[ok], genes[ok]) - own[ok]
        win = ok & (g > gain)
        best[win], gain[win] = other[win], g[win]
    moved = gain > np.log(cfg.min_ratio)
    return np.where(moved, best, cell_id), moved
