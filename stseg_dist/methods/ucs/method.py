"""``method: ucs``: cells grown from nuclei by where the transcripts are (Chen et al., 2025).

Built on the learned methods' toolkit (``methods/common``): tiles binned on the chip-anchored
grid, training patches cut around sampled nuclei each tile owns, the networks loaded once per
worker by ``TorchMethod``. What is UCS's own (chip densities, HVG regions, markers) is here; its
nets, labels and inference beside it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from ...errors import ConfigError, InputError
from ..base import PrepareContext, TileData, TileResult
from ..common.bins import bin_size_um, bin_tile
from ..common.ownership import owned_nuclei
from ..common.patches import cut_patch, patch_box, sample_nuclei
from ..common.torch_model import TorchMethod
from .config import UCSConfig
from .features import marker_grid, select_hvg
from .inference import (
    cell_priors,
    coverage,
    expression_evidence,
    foreground_pass,
    missing_cell_seeds,
    postprocess,
    predict,
)
from .training import Patch, load_model, softmask_tau, train_ucs

log = logging.getLogger(__name__)


class UCSMethod(TorchMethod):
    name = "ucs"
    config_type = UCSConfig
    load_model = staticmethod(load_model)

    def __init__(self, config, facts=None):
        super().__init__(config, facts)
        c = self.cfg
        self.bin_um = bin_size_um(self.facts, c.bin_um)
        self.paper = c.variant == "paper"
        growth_um = c.growth_um if c.growth_um is not None else default_growth_um(config)
        self.growth_bins = None if self.paper else growth_um / self.bin_um
        self.markers = load_markers(c.markers) if c.markers else None

    # -- geometry -----------------------------------------------------------------------------
    def reach_um(self) -> float:
        """How far from its nucleus a cell is considered: the published method weighs every cell
        of its 48-bin patch, so about half a patch; ours, one cell diameter.
        """
        if self.paper:
            return self.cfg.patch_px // 2 * self.bin_um
        return self.config.cells.cell_diameter_um

    def _reach_bins(self) -> int:
        return int(math.ceil(self.reach_um() / self.bin_um))

    # -- training -----------------------------------------------------------------------------
    def prepare(self, ctx: PrepareContext):
        if ctx.n_nuclei == 0:
            raise InputError(
                f"{ctx.chip.url}: UCS trains on the chip's nuclei, and none were found"
            )
        chosen = sample_nuclei(self.cfg.seed, ctx.n_nuclei, self.cfg.n_train_patches)
        n_genes = len(ctx.genes)
        hvg_needed = n_genes > self.cfg.n_hvg
        marker_types = self._marker_lookup(ctx.genes)
        size = self.cfg.patch_px
        bin_um, region_um = self.bin_um, self.cfg.hvg_region_um
        tiles = [t.index for t in ctx.grid]
        hvg = None
        if hvg_needed:  # the model trains on the genes it will see at inference: each region's HVGs
            stats = ctx.map_tiles(lambda data: _hvg_stats(data, bin_um, region_um), tiles)
            hvg = _hvg_from_stats(stats, n_genes, self.cfg.n_hvg)
        keep = hvg_filter(hvg, region_um)

        far_um, paper = self.config.cells.cell_diameter_um, self.paper

        def sample(data: TileData):
            """Training patches, and (ours) the chip-wide densities and gene counts, in one read."""
            binned = bin_tile(data, bin_um, keep)
            patches = _patches_for(binned, data, chosen, size, marker_types)
            if paper:
                return patches, None, None, None
            every_gene = (
                binned if keep is None else bin_tile(data, bin_um)
            )  # densities count every gene
            own = data.transcripts.gene[data.transcripts.in_core]
            return (
                patches,
                density_counts(every_gene, data, far_um),
                np.bincount(own, minlength=n_genes),
                nucleus_distance_histogram(data, reach_um) if target else None,
            )

        target, reach_um = self.cfg.coverage, self.reach_um()
        results = ctx.map_tiles(sample, tiles)
        patches = [p for r in results for p in r[0]]
        background = nuclear = per_gene = growth = gate = None
        if not self.paper:
            counts = np.sum([r[1] for r in results], axis=0)
            per_gene = np.sum([r[2] for r in results], axis=0)
            if target:
                hist = np.sum([r[3] for r in results], axis=0)
                growth, gate = resolve_coverage(hist, target, default_growth_um(self.config))
                log.info(
                    f"UCS coverage {target}: cells grow up to {growth:.2f} µm, foreground gate "
                    f"x{gate:.3f}"
                )
            background = chip_background(counts, self.cfg.background_sigma_um / bin_um)
            nuclear = float(counts[2] / counts[3]) if counts[3] else None
            log.info(
                f"UCS chip densities per bin: background {background} ({counts[1]:.0f} bins "
                "farther than "
                f"{far_um} µm from any nucleus), nuclei {nuclear}"
            )
        train = ctx.train_where_gpu(train_ucs)
        state = train(
            patches,
            n_genes,
            self.cfg,
            pos_weight=self._pos_weight(),
            bin_um=bin_um,
            markers=marker_types is not None,
            background=background if self.cfg.foreground_labels == "chip" else None,
            log=log.info,
        )
        return {
            "train": state,
            "bin_um": bin_um,
            "hvg": hvg,
            "region_um": region_um,
            "marker_lut": marker_types,
            "background_per_bin": background,
            "nuclear_per_bin": nuclear,
            "gene_freq": None if self.paper else (per_gene + 1.0) / (per_gene.sum() + n_genes),
            "growth_um": growth,
            "gate_scale": gate if growth is not None else None,
        }

    def _pos_weight(self) -> float:
        if self.cfg.pos_weight is not None:
            return float(self.cfg.pos_weight)
        return 5.0 if self.facts.spot_capture else 1.0

    def _marker_lookup(self, genes: list[str]) -> np.ndarray | None:
        """Per chip gene: 1 + index of the cell type it marks (0 = not a marker)."""
        if self.markers is None:
            return None
        types = sorted(self.markers.cell_type.unique())
        lut = np.zeros(len(genes), np.int64)
        index = {g: i for i, g in enumerate(genes)}
        for t, g in zip(self.markers.cell_type, self.markers.gene, strict=True):
            if g in index:
                lut[index[g]] = types.index(t) + 1
        return lut

    def describe_state(self, state) -> dict:
        return {
            **super().describe_state(state),
            "bin_um": state["bin_um"],
            "n_train_patches": state["train"]["n_patches"],
            "variant": self.cfg.variant,
            "empty_field_foreground": state["train"]["empty_field_foreground"],
            "background_per_bin": state.get("background_per_bin"),
            "nuclear_per_bin": state.get("nuclear_per_bin"),
            "hvg_regions": None if state["hvg"] is None else len(state["hvg"]),
            "growth_um": state.get("growth_um"),
        }

    # -- inference ----------------------------------------------------------------------------
    def load(self, state) -> None:
        super().load(state)
        self.fg_threshold = self.cfg.foreground_threshold
        self.fill = state.get("growth_um") is not None
        if self.fill:  # resolved from the chip for cells.ucs.coverage
            self.growth_bins = state["growth_um"] / self.bin_um
            self.fg_threshold *= state["gate_scale"]
        if self.cfg.foreground_gate == "evidence":  # the trained net's empty-field p
            self.fg_threshold = min(self.fg_threshold, state["train"]["empty_field_foreground"])

    def _binned(self, data: TileData):
        return bin_tile(
            data, self.bin_um, hvg_filter(self.state.get("hvg"), self.state.get("region_um"))
        )

    def _priors(self, seeds: np.ndarray):
        return cell_priors(
            seeds,
            self._reach_bins(),
            softmask_tau(self.cfg),
            self.cfg.scaled_softmask,
            self.growth_bins,
        )

    def _predict(self, data: TileData, with_seeds: bool):
        binned = self._binned(data)
        seeds = binned.nuclei
        if with_seeds and binned.seeds is not None:
            seeds = np.where(seeds > 0, seeds, binned.seeds)
        priors = self._priors(seeds)
        lut = None if self.paper else self.state.get("marker_lut")
        markers = (
            None
            if lut is None
            else marker_grid(binned.rows, binned.cols, binned.genes, lut, binned.shape)
        )
        evidence = None
        if self.cfg.expression_weight and self.state.get("gene_freq") is not None:
            evidence = expression_evidence(
                binned, priors, self.state["gene_freq"], self.cfg.background_sigma_um / self.bin_um
            )
            evidence = {k: self.cfg.expression_weight * v for k, v in evidence.items()}
        fg, labels = predict(
            self.model,
            self.device,
            binned,
            priors,
            markers=markers,
            fg_threshold=None if self.paper else self.fg_threshold,
            prior_weighted=not self.paper,
            cell_background=self.paper or self.cfg.cell_background,
            evidence=evidence,
        )
        return binned, seeds, fg, labels

    def find_seeds(self, data: TileData):
        if not self.cfg.missing_cells or self.paper:  # the public code grows nuclei only
            return None
        if self.cfg.cell_background:
            binned, _, fg, labels = self._predict(data, with_seeds=False)
        else:
            # Without the paper's background a bin is cell wherever a soft mask reaches it and the
            # foreground net agrees, so this pass needs no cell scores: the foreground alone.
            binned = self._binned(data)
            fg, _ = foreground_pass(self.model, self.device, binned)
            labels = coverage(self._priors(binned.nuclei), binned.shape) & (fg >= self.fg_threshold)
        nucleus_area_bins = math.pi * (self.config.nuclei.diameter_um / 2) ** 2 / self.bin_um**2
        bg, nuc = self.state.get("background_per_bin"), self.state.get("nuclear_per_bin")
        min_density = None
        if self.cfg.missing_cell_density and bg is not None and nuc is not None:
            min_density = bg[0] + self.cfg.missing_cell_density * (nuc - bg[0])
        seeds = missing_cell_seeds(
            fg,
            labels,
            binned.nuclei,
            self.cfg.missing_cell_threshold,
            max(4, int(nucleus_area_bins)),
            binned.counts(),
            min_density,
            self.cfg.missing_cell_smoothing_um / self.bin_um,
        )
        return binned.to_pixels(seeds, data.shape).astype(np.uint32)

    def segment(self, data: TileData) -> TileResult:
        binned, seeds, _, labels = self._predict(data, with_seeds=True)
        cells = postprocess(labels, seeds)
        if self.fill:
            # Bins a cell won but lost as a piece cut off from its nucleus (where several cells
            # compete far out, expression wins scatter) go to the nearest cell kept, so the
            # cells hold the coverage asked for.
            from skimage.segmentation import expand_labels

            lost = (labels > 0) & (cells == 0)
            near = expand_labels(cells, distance=max(1.0, self.growth_bins))
            cells = np.where(lost, near, cells)
        return TileResult.from_labels(binned.to_pixels(cells, data.shape).astype(np.uint32))


#: Resolution (µm) of the chip-wide histogram of transcript distances to the nearest nucleus.
DISTANCE_STEP_UM = 0.1


def nucleus_distance_histogram(data: TileData, cap_um: float) -> np.ndarray:
    """Counts of this tile's own transcripts by distance to the nearest nucleus outline (0 inside),
    in DISTANCE_STEP_UM steps up to ``cap_um``; the last entry holds every farther one.

    Exact for distances up to the halo (the window shows every nucleus that near), and cap_um is
    the method's reach, within the halo: the chip-wide sum does not depend on the tiling.
    """
    from scipy import ndimage as ndi

    n = int(round(cap_um / DISTANCE_STEP_UM)) + 2
    tx = data.transcripts
    own = tx.in_core
    if not own.any():
        return np.zeros(n, np.int64)
    if (data.nuclei > 0).any():
        dist = ndi.distance_transform_edt(data.nuclei == 0, sampling=data.pixel_size_um)
        d = dist[tx.row[own], tx.col[own]]
    else:
        d = np.full(int(own.sum()), np.inf)
    k = np.minimum(np.ceil(d / DISTANCE_STEP_UM), n - 1).astype(np.int64)
    return np.bincount(k, minlength=n)


def growth_for_coverage(hist: np.ndarray, coverage: float) -> float:
    """The least distance from a nucleus that holds ``coverage`` of the chip's transcripts (what
    expansion by that distance would assign), capped at the histogram's reach.
    """
    total = hist.sum()
    if not total:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), coverage * total))
    return min(k, len(hist) - 2) * DISTANCE_STEP_UM


def resolve_coverage(hist: np.ndarray, target: float, base_growth_um: float) -> tuple[float, float]:
    """``cells.ucs.coverage`` from the chip: (growth in µm, scale of the foreground gate).

    The growth is the distance from the nuclei that holds ``target`` of the transcripts. The gate
    relaxes in step: at the share the default growth holds (``base``) it is as set, and it falls
    linearly to 0 as the target goes from there to every transcript, (1 - target) / (1 - base)
    (measured on xenium_breast_top's left half: with the full gate UCS stops at ~0.93 of the
    transcripts whatever the growth; without it, it reaches 0.99).
    """
    growth = growth_for_coverage(hist, target)
    total = hist.sum()
    k = int(np.ceil(base_growth_um / DISTANCE_STEP_UM))
    base = float(hist[: k + 1].sum() / total) if total else 0.0
    gate = float(np.clip((1.0 - target) / (1.0 - base), 0.0, 1.0)) if base < 1 else 0.0
    return growth, gate


def default_growth_um(config) -> float:
    """How far a cell may grow beyond its nucleus by default: the cytoplasm of a typical cell,
    (cell - nucleus diameter) / 2, plus 2 µm for cells larger than typical.
    """
    return max(config.cells.cell_diameter_um - config.nuclei.diameter_um, 0.0) / 2 + 2.0


def load_markers(path: str, what: str = "cells.ucs.markers") -> pd.DataFrame:
    """A table of cell types and marker genes (CSV/TSV with columns cell_type, gene)."""
    import fsspec

    try:
        with fsspec.open(path, "r") as fh:
            table = pd.read_csv(fh, sep=None, engine="python")
    except FileNotFoundError as exc:
        raise ConfigError(f"{what}: file not found: {path}") from exc
    missing = {"cell_type", "gene"} - set(table.columns)
    if missing:
        raise ConfigError(
            f"{path}: marker table needs columns cell_type and gene; missing {sorted(missing)}"
        )
    if table.empty:
        raise ConfigError(f"{path}: marker table is empty")
    return table[["cell_type", "gene"]].astype(str)


def _patches_for(
    binned, data: TileData, chosen: np.ndarray, size: int, marker_types
) -> list[Patch]:
    """Patches centred on the chosen nuclei this tile owns (centroid pixel in its core)."""
    ids, cy, cx = owned_nuclei(data.nuclei, data.tile)
    mine = np.isin(ids, chosen)
    rows = binned.grid.pixel_to_bin(cy[mine]) - binned.origin[0]
    cols = binned.grid.pixel_to_bin(cx[mine]) - binned.origin[1]
    out = []
    for cid, br, bc in zip(ids[mine], rows, cols, strict=False):
        box = patch_box(int(br), int(bc), size, binned.shape)
        pr, pc, pg = binned.in_box(*box)
        markers = (
            None if marker_types is None else marker_grid(pr, pc, pg, marker_types, (size, size))
        )
        out.append(Patch(int(cid), pr, pc, pg, cut_patch(binned.nuclei, box, size), markers))
    return out


#: Fewer background bins than this chip-wide and the chip has no background to calibrate against.
MIN_BACKGROUND_BINS = 100
#: ... and fewer than this share of the chip's bins: tissue so dense that the bins far from every
#: nucleus are mostly cells whose nucleus went unseen, not background.
MIN_BACKGROUND_FRACTION = 0.01


def density_counts(binned, data: TileData, far_um: float) -> np.ndarray:
    """Chip-wide density statistics from this tile's own bins: (transcripts, bins) farther than
    ``far_um`` from every nucleus, (transcripts, bins) of nuclei, and all its bins.

    No nucleated cell reaches that far, so the far bins sample the chip's background: gaps,
    acellular tissue, free RNA; nuclei sample cells. A bin is the tile's own when its centre
    pixel lies in the core, so the chip-wide sums do not depend on the tiling (the halo shows
    every nucleus in reach).
    """
    from scipy import ndimage as ndi

    far = (
        ndi.distance_transform_edt(binned.nuclei == 0) * (1.0 / binned.scale) * data.pixel_size_um
        > far_um
    )
    if binned.seeds is not None:
        far &= binned.seeds == 0
    own = binned.grid.owned(data.tile)
    out = []
    for sel in (far & own, (binned.nuclei > 0) & own):
        out += [int(sel[binned.rows, binned.cols].sum()) if len(binned.rows) else 0, int(sel.sum())]
    return np.array([*out, int(own.sum())], np.float64)


def chip_background(stats: np.ndarray, sigma_bins: float) -> tuple[float, float] | None:
    """Two smoothed counts per bin from the chip's background: its mean, and that plus 2.33
    standard deviations of a Gaussian-weighted Poisson mean (p < 0.01 above it); None where too
    few bins lie far from every nucleus to measure a background.

    Measured on CosMx, MERSCOPE, Xenium and MERFISH crops against quantiles of the far bins
    (75th/95th): the mean matched the reference cells' extent better on CosMx (F1 0.622 vs 0.571).
    """
    n_far, n_own = stats[1], stats[4]
    if n_far < max(MIN_BACKGROUND_BINS, MIN_BACKGROUND_FRACTION * n_own):
        return None
    mean = float(stats[0] / n_far)
    return mean, mean + 2.33 * float(np.sqrt(mean / (4 * np.pi * sigma_bins**2)))


def hvg_filter(hvg: dict | None, region_um: float):
    """``keep(x_um, y_um, genes) -> bool mask``: each transcript's gene is one of its region's
    HVGs.
    """
    if hvg is None:
        return None

    def keep(x, y, genes):
        key = _region_keys(x, y, region_um)
        out = np.ones(len(genes), bool)
        for k in np.unique(key):
            sel = key == k
            mask = hvg.get(int(k))
            if mask is not None:
                out[sel] = mask[genes[sel]]
        return out

    return keep


def _region_keys(x, y, region_um) -> np.ndarray:
    rx = np.floor(np.asarray(x) / region_um).astype(np.int64)
    ry = np.floor(np.asarray(y) / region_um).astype(np.int64)
    return ry * 1_000_003 + rx


def _hvg_stats(data: TileData, bin_um: float, region_um: float) -> pd.DataFrame:
    """Counts per (region, 10-bin block, gene) of the tile's own (core) transcripts."""
    tx = data.transcripts
    own = tx.in_core
    block_um = 10 * bin_um
    bx = np.floor(tx.x[own] / block_um).astype(np.int64)
    by = np.floor(tx.y[own] / block_um).astype(np.int64)
    df = pd.DataFrame(
        {
            "region": _region_keys(tx.x[own], tx.y[own], region_um),
            "bx": bx,
            "by": by,
            "gene": tx.gene[own].astype(np.int64),
        }
    )
    return df.groupby(["region", "bx", "by", "gene"]).size().rename("n").reset_index()


def _hvg_from_stats(parts: list[pd.DataFrame], n_genes: int, n_hvg: int) -> dict[int, np.ndarray]:
    df = pd.concat([p for p in parts if p is not None and len(p)], ignore_index=True)
    df = df.groupby(["region", "bx", "by", "gene"], as_index=False).n.sum()
    out = {}
    for region, g in df.groupby("region"):
        blocks = g.groupby(["bx", "by"]).ngroup().to_numpy()
        nb = int(blocks.max()) + 1
        rows, cols = blocks // max(1, nb), blocks % max(1, nb)
        expanded = np.repeat(np.arange(len(g)), g.n.to_numpy())
        out[int(region)] = select_hvg(
            rows[expanded], cols[expanded], g.gene.to_numpy()[expanded], n_genes, n_hvg, block=1
        )
    return out
