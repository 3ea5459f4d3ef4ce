"""``cells.membrane``: the membrane method's settings (both variants; read by :mod:`.method`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...imaging.cellpose import CellposeConfig
from ...settings import at_least_one, one_of, positive, require

if TYPE_CHECKING:
    from ...config import PipelineConfig


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
    # the chip's track lines (Stereo-seq), as STCellbin registers; each tile reads its stain through
    # it.
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

    def validate(self, key: str, root: PipelineConfig) -> None:
        one_of(self, key, "variant", ("stseg", "paper"))
        one_of(self, key, "backend", ("classical", "cellpose"))
        positive(self, key, "block_um", "min_cell_area_um2")
        for name in ("block_overlap_um", "max_cell_area_um2"):
            v = getattr(self, name)
            require(v is None or v > 0, f"{key}.{name} must be positive or null, got {v}")
        require(
            self.nucleus_free_min_density >= 0,
            f"{key}.nucleus_free_min_density must not be negative, got "
            f"{self.nucleus_free_min_density}",
        )
        require(
            self.channel >= 0, f"{key}.channel must be a channel index >= 0, got {self.channel}"
        )
        require(
            self.channel != root.nuclei.channel,
            f"{key}.channel {self.channel} is the nuclear stain channel (nuclei.channel)",
        )
        positive(self, key, "max_distance_um")
        for name in ("sigma_um", "ridge_um"):
            require(
                getattr(self, name) >= 0,
                f"{key}.{name} must be positive, got {getattr(self, name)}",
            )
        require(self.max_shift_um >= 0, f"{key}.max_shift_um must be >= 0, got {self.max_shift_um}")
        at_least_one(self, key, "register_downsample", "register_max_regions")
        require(
            self.register_patch_px >= 8,
            f"{key}.register_patch_px must be >= 8, got {self.register_patch_px}",
        )
        one_of(self, key, "register_normalization", ("none", "phase"))
        one_of(self, key, "registration", ("offset", "track_lines"))
        positive(self, key, "track_line_um")
        at_least_one(self, key, "register_min_margin")
        if self.backend == "cellpose":
            self.cellpose.validate(f"{key}.cellpose", root)
        d = self.diameters_um
        require(
            isinstance(d, list)
            and bool(d)
            and all(not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0 for v in d),
            f"{key}.diameters_um must be a non-empty list of positive numbers, got {d!r}",
        )
