"""Typed pipeline configuration: one home for defaults, YAML presets and ``--set`` overrides.

Unknown keys and wrong types are rejected with the dotted key that is at fault, so a typo in a
100-slide batch manifest fails before any tile is scheduled.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import redact
from .errors import ConfigError


@dataclass
class TilingConfig:
    """Tile grid: a core that owns pixels and transcripts, plus a halo of context."""

    tile_size_um: float = 500.0
    halo_um: float | None = None  # None: derived from the method's reach (tiling.halo_um)
    chunk_px: int = 256  # output zarr chunk; tile cores are whole multiples of it

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _positive(self, key, "tile_size_um", "chunk_px")
        _require(
            self.halo_um is None or self.halo_um >= 0,
            f"{key}.halo_um must not be negative, got {self.halo_um}",
        )


@dataclass
class ClassicalNucleiConfig:
    sigma_um: float = 0.6
    threshold: float | None = (
        None  # absolute (in normalised units when normalise); None: chip-wide Otsu
    )
    min_area_um2: float = 8.0
    min_distance_um: float = 3.0  # between seeds, for seeds="shape"
    footprint_um: float = 4.0  # for seeds="shape"
    background_um: float | None = None  # white top-hat width (~2 nucleus diameters); None: off
    # Dense-tissue switches, each measured on every real crop in docs/nuclei_classical.md. They
    # win on the real crops (Xenium breast, CosMx, dsb2018) but over-split the generated chips'
    # flat, noisy nuclei, so they are on in the presets of the platforms they were measured on
    # (configs/xenium.yaml, configs/cosmx.yaml), not here: all off is the previous backend.
    # The stain is rescaled so that the chip's normalise_percentiles (of every tile's core, in
    # prepare) become 0 and 1: every threshold and weight below is in those units.
    normalise: bool = False
    normalise_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.5])
    # "log_otsu": Otsu on log(stain + 0.05) (dim nuclei of dense tissue are a third as bright as
    # the bright ones and fall below a linear Otsu); "otsu": on the stain itself.
    foreground: str = "otsu"
    # "shape_intensity": nuclei are basins of the clamped distance to the background plus
    # intensity_weight times the stain smoothed over seed_sigma x the diameter (touching nuclei
    # with no neck split at their darker seam); seeds are seed_radius x the diameter apart.
    # "shape": the distance alone, seeds max(footprint_um / 2, min_distance_um) apart.
    seeds: str = "shape"
    intensity_weight: float = 2.0
    seed_sigma: float = 0.15
    seed_radius: float = 0.2
    # A seed that reaches a better pixel within half a diameter without its stain dipping by more
    # than this (normalised units) is texture or noise, not a nucleus (h-maxima); 0: off.
    seed_dynamic: float = 0.0
    # A pixel stays in its nucleus only where the stain is at least this fraction of the stain at
    # the nucleus's seed (each nucleus cut at its own level: a bright nucleus's glow is not
    # nucleus); None: off.
    peak_fraction: float | None = None
    # The diameter the seeds and reach use is the median equivalent diameter of a first pass's
    # nuclei (nuclei.diameter_um for that pass), kept within [0.5, 1.5] x nuclei.diameter_um.
    learn_size: bool = False

    def validate(self, key: str, root: "PipelineConfig") -> None:
        bg = self.background_um
        _require(bg is None or bg > 0, f"{key}.background_um must be positive or null, got {bg}")
        _one_of(self, key, "foreground", ("otsu", "log_otsu"))
        _one_of(self, key, "seeds", ("shape", "shape_intensity"))
        q = self.normalise_percentiles
        _require(
            isinstance(q, list) and len(q) == 2 and 0 <= q[0] < q[1] <= 100,
            f"{key}.normalise_percentiles must be two percentiles lo < hi in [0, 100], "
            f"got {list(self.normalise_percentiles)}",
        )
        pf = self.peak_fraction
        _require(
            pf is None or 0 < pf < 1, f"{key}.peak_fraction must be in (0, 1) or null, got {pf}"
        )
        _positive(self, key, "seed_sigma", "seed_radius")
        _require(
            self.seed_dynamic >= 0,
            f"{key}.seed_dynamic must not be negative, got {self.seed_dynamic}",
        )
        _require(
            self.intensity_weight >= 0,
            f"{key}.intensity_weight must not be negative, got {self.intensity_weight}",
        )


@dataclass
class CellposeConfig:
    """One Cellpose section for every stage that runs it (nuclei.cellpose, cells.membrane.cellpose)."""

    model: str = "cpsam"  # a built-in name, a local path, or an fsspec URL
    batch_size: int = 8
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    diameter_px: float | None = (
        None  # nuclei; the membrane method tries cells.membrane.diameters_um
    )
    storage_options: dict = field(default_factory=dict)


@dataclass
class NucleiConfig:
    # auto: the chip's vendor nuclei (nuclei.zarr) when it has them, else classical; the choice
    # and its reason go into run.json ("nuclei"). classical | vendor | cellpose pick one outright.
    backend: str = "auto"
    channel: int = 0
    diameter_um: float = 8.0
    classical: ClassicalNucleiConfig = field(default_factory=ClassicalNucleiConfig)
    cellpose: CellposeConfig = field(default_factory=CellposeConfig)


@dataclass
class ExpansionConfig:
    distance_um: float = 5.0

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _require(
            self.distance_um >= 0, f"{key}.distance_um must not be negative, got {self.distance_um}"
        )


@dataclass
class UCSConfig:
    # "paper": the published method (reference-size nets, the paper's labels, inference rule,
    # optimiser and soft-mask tau 5; no missing cells) to measure every departure against.
    # "stseg": ours, with the departures below (each a switch with its measured effect).
    variant: str = "stseg"
    bin_um: float | None = None  # None: 1 µm (Xenium, MERSCOPE) or 0.5 µm (CosMx, Stereo-seq)
    n_hvg: int = 1000
    hvg_region_um: float = 1000.0  # HVGs are chosen per square region of this size
    patch_px: int = 48
    tau: float = 3.0  # bins; 5 covers cells whose nucleus is unseen, 2 cuts big cells short
    epochs: int = 20  # at most, per network: each stops earlier on a loss plateau
    # A network stops when its last plateau_patience epochs improved its best loss by less than
    # plateau_tol of it (patience 0: always the full epochs).
    plateau_patience: int = 3
    plateau_tol: float = 0.01
    n_train_patches: int = 256
    batch_size: int = 16
    lr: float = 1e-3  # the paper's 1e-4 needs far more steps than an on-chip fit affords
    weight_decay: float = 1e-4
    pos_weight: float | None = None  # None: 5 on Stereo-seq, else 1
    missing_cells: bool = True
    # Nucleus-less cells are sought where the foreground, smoothed by a Gaussian of
    # missing_cell_smoothing_um, exceeds missing_cell_threshold outside every cell (0 / 0.95 before:
    # the trained net's speckle broke real cell bodies apart, so finding one hung on the seed).
    missing_cell_threshold: float = 0.85
    missing_cell_smoothing_um: float = 0.5
    # A nucleus-less cell must be this far from the chip's background density towards its nuclei's
    # (0: any confident foreground will do, as before).
    missing_cell_density: float = 1.0
    foreground_threshold: float = 0.5  # bins below it never join a cell (0.5: the net's argmax)
    # "threshold": a bin joins a cell only where the foreground net says p >= foreground_threshold.
    # "evidence": only transcripts that look like background keep a bin out: the threshold is at
    # most the net's p for a bin with no transcript in its receptive field, so where there is no
    # evidence at all the soft mask and growth_um decide (with "threshold" that choice falls to
    # whichever side of the threshold the trained net's empty-field p happens to lie).
    foreground_gate: str = "threshold"
    background_dilation: int = 4  # iterations of the 10x10 dilation around nuclei before background
    # Foreground training labels beyond the paper's (background only far from nuclei, which dense
    # tissue never reaches): "chip": gaps at or below the chip's own background density are
    # background, cytoplasm next to a nucleus clearly above it cell; "nuclei": the same against
    # background_density times the nuclei's density (also "chip"'s fallback where too few bins lie
    # far from every nucleus to measure a background); "paper": the published rule alone.
    foreground_labels: str = "chip"
    background_density: float = 0.25
    background_sigma_um: float = 1.5  # smoothing of the counts for that rule
    scaled_softmask: bool = True
    # The cell net also sees each cell's expression profile (its features averaged over its
    # nucleus), beyond the paper: between two nuclei, a bin goes to the one it resembles. Off by
    # default: on generated chips it moved F1 by -0.002 and right-cell by +0.004 at 1.6x the
    # inference time.
    expression_profile: bool = False
    # The paper's background (mean over the cells in reach of 1 - q) also decides cell or not;
    # false: the foreground net alone does, the cell net only says which cell.
    cell_background: bool = False
    # Where cells compete for a bin, add this times the evidence that their nucleus's expression
    # explains the transcripts there (log-likelihood ratio vs the chip average); 0: distance alone.
    expression_weight: float = 1.0
    # How far a cell may extend beyond its nucleus outline; None: (cells.cell_diameter_um -
    # nuclei.diameter_um) / 2 + 2 µm (a typical cytoplasm and some slack).
    growth_um: float | None = None
    markers: str | None = None  # table of cell types and marker genes
    seed: int = 0

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _require(self.patch_px >= 8, f"{key}.patch_px must be at least 8 bins, got {self.patch_px}")
        _require(
            self.growth_um is None or self.growth_um > 0,
            f"{key}.growth_um must be positive or null, got {self.growth_um}",
        )
        _positive(self, key, "tau")
        _require(
            self.bin_um is None or self.bin_um > 0,
            f"{key}.bin_um must be positive, got {self.bin_um}",
        )
        _in_range(self, key, "foreground_threshold", "[0, 1)")
        _one_of(self, key, "foreground_gate", ("threshold", "evidence"))
        _require(
            self.expression_weight >= 0,
            f"{key}.expression_weight must not be negative, got {self.expression_weight}",
        )
        _in_range(self, key, "missing_cell_density", "[0, 1]")
        _in_range(self, key, "missing_cell_threshold", "(0, 1]")
        _require(
            self.missing_cell_smoothing_um >= 0,
            f"{key}.missing_cell_smoothing_um must not be negative, got {self.missing_cell_smoothing_um}",
        )
        _one_of(self, key, "foreground_labels", ("paper", "nuclei", "chip"))
        _in_range(self, key, "background_density", "(0, 1)")
        _positive(self, key, "background_sigma_um")
        _one_of(self, key, "variant", ("paper", "stseg"))
        _require(
            min(self.epochs, self.batch_size, self.n_train_patches) >= 1,
            f"{key}.epochs, batch_size and n_train_patches must be at least 1",
        )
        _require(
            self.plateau_patience >= 0,
            f"{key}.plateau_patience must not be negative, got {self.plateau_patience}",
        )
        _in_range(self, key, "plateau_tol", "[0, 1)")


@dataclass
class GeneSegNetConfig:
    # "stseg": a 3-level U-Net, cells by nearest nucleus centroid to a bin's offset landing, labels
    # relabelled between rounds, flips only, log RNA map. "paper": GeneSegNet as published (Wang et
    # al. 2023): the RNA map clipped at rna_clip, a centre map head (bins follow their offsets to
    # predicted centres matched to nuclei), a level set on each mask between rounds, scale/rotate/
    # crop augmentation, a 4-scale U-Net of pre-activation residual blocks. The switches below
    # (paper variant only) turn each part off: a named departure.
    variant: str = "stseg"
    rna_clip: float = 1.0  # paper: the Gaussian sum clipped at this value (the network's RNA input)
    centre_map: bool = (
        True  # false: the stseg assignment (nearest nucleus centroid), no centre head
    )
    centre_sigma_um: float = (
        1.5  # centre map target: a Gaussian of this sigma at each nucleus centre
    )
    centre_threshold: float = (
        0.3  # a predicted centre: a local maximum of the centre map above this
    )
    centre_fallback: bool = (
        True  # departure: a nucleus no predicted centre matches keeps its centroid
    )
    level_set: str = "chan_vese"  # chan_vese | geodesic | none (departure: relabel only)
    level_set_iters: int = 10
    augment: str = "scale_rotate_crop"  # | flip (departure)
    scale_min: float = 0.75  # augmentation zoom range
    scale_max: float = 1.25
    net: str = "resunet4"  # resunet4 (paper) | unet3 (departure)
    bin_um: float = 1.0  # the U-Net's pixel: image blocks of about this size, anchored to the chip
    patch_px: int = 48  # training patch and inference window side, in bins; a multiple of 8
    rna_sigma_um: float = 1.5  # Gaussian kernel of the RNA location map
    init_expand_um: float = 4.0  # round-1 labels: nuclei expanded by this much
    n_train_patches: int = 128
    epochs: int = 8  # per refinement round
    max_rounds: int = 4
    agree_iou: float = 0.93  # stop refining once consecutive rounds' labels agree this well
    batch_size: int = 8
    lr: float = 2e-3
    width: int = 16  # channels of the U-Net's first level
    prob_threshold: float = 0.5
    seed: int = 0

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _positive(self, key, "bin_um", "rna_sigma_um", "lr")
        _require(
            self.init_expand_um >= 0,
            f"{key}.init_expand_um must be zero or more, got {self.init_expand_um}",
        )
        _at_least_one(self, key, "epochs", "max_rounds", "n_train_patches", "batch_size", "width")
        _in_range(self, key, "agree_iou", "(0, 1]")
        _in_range(self, key, "prob_threshold", "(0, 1)")
        _one_of(self, key, "variant", ("stseg", "paper"))
        _one_of(self, key, "level_set", ("chan_vese", "geodesic", "none"))
        _one_of(self, key, "augment", ("scale_rotate_crop", "flip"))
        _one_of(self, key, "net", ("resunet4", "unet3"))
        _positive(self, key, "rna_clip", "centre_sigma_um", "scale_min")
        _in_range(self, key, "centre_threshold", "(0, 1)")
        _at_least_one(self, key, "level_set_iters")
        _require(
            self.scale_max >= self.scale_min,
            f"{key}.scale_max must be at least scale_min ({self.scale_min}), got {self.scale_max}",
        )


@dataclass
class MembraneConfig:
    # "stseg": cells flooded from the nuclei (classical) or Cellpose cells named by them, within
    # max_distance_um of a nucleus; membrane registered by an integer offset. "paper": STCellbin
    # (Zhang et al. 2024): cells segmented on the membrane alone over overlapping chip-anchored
    # blocks (Cellpose at several diameters, or a watershed that needs no nuclei), nucleus-free
    # cells kept with their own IDs, no distance cap.
    variant: str = "stseg"
    channel: int = 1  # image channel of the membrane / cell-wall stain
    backend: str = "classical"  # classical (watershed seeded by nuclei, no weights) | cellpose
    max_distance_um: float = 10.0  # no cell extends further than this from its nucleus
    sigma_um: float = 0.5  # smoothing of the membrane before the watershed
    threshold: float | None = None  # membrane intensity that stops a cell; None = chip-wide Otsu
    ridge_um: float = 1.0  # membrane pixels given to the cells either side, up to this far
    register: bool = True  # register the membrane to the nuclear stain (one offset per chip)
    register_downsample: int = 4
    register_patch_px: int = 256  # side of each sampled region, in downsampled pixels
    register_max_regions: int = 64  # regions sampled evenly across the chip (offset and threshold)
    register_normalization: str = "none"  # none (plain cross-correlation) | phase
    max_shift_um: float = 10.0  # larger offsets are refused; the halo grows by this much
    # "offset": the integer offset to the nuclear stain (above). "track_lines": the similarity
    # (flip, quarter turns, small angle, scale, offset) of the stain to the expression map through
    # the chip's track lines (Stereo-seq), as STCellbin registers; each tile reads its stain through it.
    registration: str = "offset"
    track_line_um: float = 1.5  # width of a track line
    register_min_margin: int = 2  # track lines the chosen orientation must match beyond any other
    cellpose: CellposeConfig = field(default_factory=CellposeConfig)  # the cellpose backend's model
    diameters_um: list[float] = field(default_factory=lambda: [10.0, 15.0, 20.0])  # tried per tile
    # paper variant: blocks of this side are segmented with a margin of block_overlap_um (None:
    # cells.cell_diameter_um), so a cell centred in a block is seen whole; the halo grows with both.
    block_um: float = 48.0
    block_overlap_um: float | None = None
    keep_nucleus_free: bool = (
        True  # paper: cells holding no nucleus get their own IDs (false: dropped)
    )
    # Departure: a nucleus-free cell must hold this fraction of the chip's mean transcript density
    # (0: every stain cell is kept, as published; the empty gaps between cells look like cells).
    nucleus_free_min_density: float = 0.5
    # A cell holding several nuclei is split between them (a departure; off: one ID, as published,
    # measured F1 0.943 vs 0.940 split on generated chip 1).
    split_by_nuclei: bool = False
    min_cell_area_um2: float = 10.0  # paper classical: smaller stain regions are debris
    max_cell_area_um2: float | None = (
        None  # paper classical; None: 4x a disc of cells.cell_diameter_um
    )

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _one_of(self, key, "variant", ("stseg", "paper"))
        _one_of(self, key, "backend", ("classical", "cellpose"))
        _positive(self, key, "block_um", "min_cell_area_um2")
        for name in ("block_overlap_um", "max_cell_area_um2"):
            v = getattr(self, name)
            _require(v is None or v > 0, f"{key}.{name} must be positive or null, got {v}")
        _require(
            self.nucleus_free_min_density >= 0,
            f"{key}.nucleus_free_min_density must not be negative, got {self.nucleus_free_min_density}",
        )
        _require(
            self.channel >= 0, f"{key}.channel must be a channel index >= 0, got {self.channel}"
        )
        _require(
            self.channel != root.nuclei.channel,
            f"{key}.channel {self.channel} is the nuclear stain channel (nuclei.channel)",
        )
        _positive(self, key, "max_distance_um")
        for name in ("sigma_um", "ridge_um"):
            _require(
                getattr(self, name) >= 0,
                f"{key}.{name} must be positive, got {getattr(self, name)}",
            )
        _require(
            self.max_shift_um >= 0, f"{key}.max_shift_um must be >= 0, got {self.max_shift_um}"
        )
        _at_least_one(self, key, "register_downsample", "register_max_regions")
        _require(
            self.register_patch_px >= 8,
            f"{key}.register_patch_px must be >= 8, got {self.register_patch_px}",
        )
        _one_of(self, key, "register_normalization", ("none", "phase"))
        _one_of(self, key, "registration", ("offset", "track_lines"))
        _positive(self, key, "track_line_um")
        _at_least_one(self, key, "register_min_margin")
        d = self.diameters_um
        _require(
            isinstance(d, list)
            and bool(d)
            and all(not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0 for v in d),
            f"{key}.diameters_um must be a non-empty list of positive numbers, got {d!r}",
        )


@dataclass
class SSLCSTConfig:
    bin_um: float | None = (
        None  # spot size; None: 1 µm (Xenium, MERSCOPE) or 0.5 µm (CosMx, Stereo-seq)
    )
    neighbourhood: int = 5  # k: a spot's tokens are the k x k spots around it (odd)
    n_genes: int = (
        32  # expression features: the chip's most counted genes (plus the all-gene total)
    )
    erosion_bins: int = 1  # positives: spots at least this far inside a nucleus
    neg_distance_um: float = (
        8.0  # negatives: farther than this from every nucleus, empty neighbourhood
    )
    d0_um: float = 5.0  # nucleus-position prior exp(-d / d0), d to the nearest nucleus centroid
    n_directions: int = 16  # direction classes; a multiple of 4
    max_steps: int | None = (
        None  # flow-tracking steps of one spot; None: (cell - nucleus diameter) / 2 + 2 µm
    )
    in_threshold: float = 0.5  # in-cell probability at which a spot follows its directions
    d_model: int = 32
    heads: int = 4
    epochs: int = 10
    n_train_spots: int = 4096
    batch_size: int = 64  # small batches: the direction head needs steps more than samples
    lr: float = 3e-3
    augment: bool = True  # turn batches by the square's symmetries (directions turned with them)
    seed: int = 0
    # stseg (ours) | paper (Huo et al.: pre-LN blocks over all genes, positives with expression,
    # direction prior, 8-neighbour smoothing, floor binning, tracking to the nucleus centre)
    variant: str = "stseg"
    blocks: int = 8  # paper: pre-LN self-attention + residual-MLP blocks
    # paper variant's departures, each a named switch (README: their measured effect); the
    # paper variant also keeps augment and a max_steps cap (None: cell radius + 4 µm)
    top_genes_only: bool = False  # departure when True: the n_genes most counted genes (paper: all)
    step_at_bin_centre: bool = (
        True  # departure: a floor-binned class steps along its bin's centre (paper: edge)
    )
    centre_radius_um: float | None = None  # a path ends within this of a centroid; None: 1.5 spots
    # Each cell's mask closed over this radius, on empty spots only (None: 4 µm for stseg, 0 for
    # paper, whose spots stay as tracked). Tracking labels the spots the in/out head calls in, and
    # at 1 µm most spots inside a cell hold no transcript, so masks are porous; no transcript moves.
    fill_um: float | None = None

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _one_of(self, key, "variant", ("stseg", "paper"))
        _at_least_one(self, key, "blocks")
        _require(
            self.fill_um is None or self.fill_um >= 0,
            f"{key}.fill_um must not be negative, got {self.fill_um}",
        )
        _require(
            self.centre_radius_um is None or self.centre_radius_um > 0,
            f"{key}.centre_radius_um must be positive, got {self.centre_radius_um}",
        )
        _require(
            self.bin_um is None or self.bin_um > 0,
            f"{key}.bin_um must be positive, got {self.bin_um}",
        )
        _require(
            self.neighbourhood >= 3 and self.neighbourhood % 2 == 1,
            f"{key}.neighbourhood must be an odd number of spots >= 3, got {self.neighbourhood}",
        )
        _require(
            self.n_directions >= 4 and self.n_directions % 4 == 0,
            f"{key}.n_directions must be a multiple of 4 (the square's turns map classes onto classes), "
            f"got {self.n_directions}",
        )
        _require(
            self.erosion_bins >= 0, f"{key}.erosion_bins must be >= 0, got {self.erosion_bins}"
        )
        _positive(self, key, "neg_distance_um", "d0_um", "lr")
        _in_range(self, key, "in_threshold", "(0, 1)")
        _at_least_one(
            self, key, "n_genes", "epochs", "n_train_spots", "batch_size", "d_model", "heads"
        )
        _require(
            self.d_model % self.heads == 0,
            f"{key}.d_model ({self.d_model}) must be a multiple of {key}.heads ({self.heads})",
        )
        _require(
            self.max_steps is None or self.max_steps >= 1,
            f"{key}.max_steps must be at least 1, got {self.max_steps}",
        )


@dataclass
class CellsConfig:
    method: str = "expansion"  # expansion | ucs | membrane | genesegnet | sslcst | module:Class
    cell_diameter_um: float = 15.0
    expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    ucs: UCSConfig = field(default_factory=UCSConfig)
    genesegnet: GeneSegNetConfig = field(default_factory=GeneSegNetConfig)
    membrane: MembraneConfig = field(default_factory=MembraneConfig)
    sslcst: SSLCSTConfig = field(default_factory=SSLCSTConfig)


@dataclass
class StageResources:
    """How one stage runs on Ray; ``None`` keeps what the stage's backend or method declares
    (``compute()``: e.g. Cellpose and UCS ask for an actor pool holding GPUs)."""

    num_cpus: float = 1.0
    num_gpus: float | None = None  # per task or actor; used only where the cluster has GPUs
    memory_gb: float | None = None
    actors: int | None = None  # 0: Ray tasks; N: a pool of N actors that load their model once

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _positive(self, key, "num_cpus")
        _require(
            self.num_gpus is None or self.num_gpus >= 0,
            f"{key}.num_gpus must be >= 0, got {self.num_gpus}",
        )
        _require(
            self.memory_gb is None or self.memory_gb > 0,
            f"{key}.memory_gb must be positive, got {self.memory_gb}",
        )
        _require(
            self.actors is None or self.actors >= 0, f"{key}.actors must be >= 0, got {self.actors}"
        )


@dataclass
class ResourcesConfig:
    nuclei: StageResources = field(default_factory=StageResources)
    cells: StageResources = field(default_factory=StageResources)
    scan: StageResources = field(default_factory=StageResources)

    def validate(self, key: str, root: "PipelineConfig") -> None:
        for name in ("nuclei", "cells", "scan"):
            getattr(self, name).validate(f"{key}.{name}", root)


@dataclass
class RuntimeConfig:
    max_in_flight: int | None = None  # None: 2 x the cluster's CPUs
    max_retries: int = 3
    progress: bool = True
    fail_fast: bool = False

    def validate(self, key: str, root: "PipelineConfig") -> None:
        _require(
            self.max_in_flight is None or self.max_in_flight >= 1,
            f"{key}.max_in_flight must be at least 1, got {self.max_in_flight}",
        )
        _require(self.max_retries >= 0, f"{key}.max_retries must be >= 0, got {self.max_retries}")


@dataclass
class PipelineConfig:
    tiling: TilingConfig = field(default_factory=TilingConfig)
    nuclei: NucleiConfig = field(default_factory=NucleiConfig)
    cells: CellsConfig = field(default_factory=CellsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> "PipelineConfig":
        """Check the values of every section this run uses (ranges, choices); errors name the key.

        Unknown keys and wrong types are refused earlier, when the config is built; a section of
        a method or backend that is not selected is checked only when it is.
        """
        for name in ("tiling", "resources", "runtime"):
            getattr(self, name).validate(name, self)
        validate_section(self, f"nuclei.{self.nuclei.backend}")
        validate_section(self, f"cells.{self.cells.method}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_section(root: PipelineConfig, key: str) -> None:
    """Validate the section at dotted ``key`` (e.g. ``cells.ucs``) if it exists and has rules;
    a plugin's name (``module:Class``) or a section without rules passes."""
    node: Any = root
    for part in key.split("."):
        node = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
    if dataclasses.is_dataclass(node) and hasattr(node, "validate"):
        node.validate(key, root)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(section: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value > 0, f"{key}.{name} must be positive, got {value}")


def _at_least_one(section: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _require(value >= 1, f"{key}.{name} must be at least 1, got {value}")


def _in_range(section: Any, key: str, name: str, interval: str) -> None:
    """``interval`` in mathematical notation, e.g. ``(0, 1]``."""
    value = getattr(section, name)
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    ok = (lo < value if interval[0] == "(" else lo <= value) and (
        value < hi if interval[-1] == ")" else value <= hi
    )
    _require(ok, f"{key}.{name} must be in {interval}, got {value}")


def _one_of(section: Any, key: str, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(section, name)
    _require(value in choices, f"{key}.{name} must be one of {', '.join(choices)}, got {value!r}")


#: Settings that moved, named in the error a config using the old key gets (by full key, or by
#: name wherever it appears).
MOVED = {
    **{
        f"cells.membrane.{k}": f"the membrane's Cellpose settings are one section: cells.membrane.cellpose.{k}"
        for k in ("model", "flow_threshold", "cellprob_threshold", "batch_size", "storage_options")
    },
    "num_gpus": "GPUs per task or actor are set once per stage: resources.nuclei.num_gpus or resources.cells.num_gpus",
    "num_actors": "actor pools are sized once per stage: resources.nuclei.actors or resources.cells.actors",
}


def _shown(key: str, value: Any) -> str:
    """How an error message shows a value: masked under storage_options or a credential-like key."""
    parts = key.strip().split(".")
    return (
        redact.MASK
        if any(p == "storage_options" or redact.is_sensitive(p) for p in parts)
        else repr(value)
    )


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or (
        origin is not None and str(origin) == "<class 'types.UnionType'>"
    ):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {_shown(key, value)}")
        return _build(typ, value, key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {_shown(key, value)}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {_shown(key, value)}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {_shown(key, value)}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {_shown(key, value)}")
        return value
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {_shown(key, value)}")
        return dict(value)
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        moved = [
            MOVED.get(f"{prefix}.{k}") or MOVED[k]
            for k in unknown
            if f"{prefix}.{k}" in MOVED or (k in MOVED and not prefix.startswith("resources"))
        ]
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(k) for k in unknown)} in {where}; "
            f"known keys: {', '.join(sorted(names))}" + "".join(f"; {m}" for m in moved)
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(items: list[str] | None) -> dict:
    """Turn ``["cells.method=ucs", "tiling.tile_size_um=200"]`` into a nested dict (YAML values)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            shown = _shown(key, raw)
            raise ConfigError(
                f"--set {key}: cannot parse value {shown}"
                + ("" if shown == redact.MASK else f": {exc}")
            ) from exc
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """``STSEG_RUNTIME__MAX_RETRIES=5`` style overrides for runtime knobs on clusters."""
    environ = os.environ if environ is None else environ
    items = []
    for name, value in environ.items():
        if name.startswith("STSEG_") and "__" in name:
            key = name[len("STSEG_") :].lower().replace("__", ".")
            items.append(f"{key}={value}")
    return parse_set(items)


def load_config(
    path: str | None = None, overrides: dict | None = None, *, use_env: bool = True
) -> PipelineConfig:
    """Defaults, then a YAML file, then ``STSEG_*`` environment, then explicit overrides."""
    data: dict = {}
    if path is not None:
        import fsspec

        try:
            with fsspec.open(path, "r") as fh:
                loaded = yaml.safe_load(fh) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:  # position only: the offending line may hold a credential
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"config file {path} is not valid YAML: {problem}{at}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = _merge(data, loaded)
    if use_env:
        data = _merge(data, env_overrides())
    if overrides:
        data = _merge(data, overrides)
    try:
        config = _build(PipelineConfig, data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise
    redact.register(config.to_dict())  # so logs and error messages can mask its credentials
    return config


def config_from_dict(data: dict) -> PipelineConfig:
    config = _build(PipelineConfig, data)
    redact.register(config.to_dict())
    return config
