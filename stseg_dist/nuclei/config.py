"""``nuclei``: the nuclei stage's settings and its backends' (read by :mod:`.classical`,
:mod:`.cellpose_backend`; the Cellpose section is shared with the membrane method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..imaging.cellpose import CellposeConfig
from ..settings import not_negative, positive, require, validate_section

if TYPE_CHECKING:
    from ..config import PipelineConfig


@dataclass
class ClassicalNucleiConfig:
    sigma_um: float = 0.6
    threshold: float | None = None  # absolute; None = Otsu on a chip-wide downsampled image
    min_area_um2: float = 8.0
    min_distance_um: float = 3.0  # between watershed seeds
    footprint_um: float = 4.0
    background_um: float | None = None  # white top-hat width (~2 nucleus diameters); None: off

    def validate(self, key: str, root: "PipelineConfig") -> None:
        bg = self.background_um
        require(bg is None or bg > 0, f"{key}.background_um must be positive or null, got {bg}")
        not_negative(self, key, "sigma_um", "min_area_um2")
        positive(self, key, "min_distance_um", "footprint_um")
        require(
            self.threshold is None or self.threshold >= 0,
            f"{key}.threshold must not be negative, got {self.threshold}",
        )


@dataclass
class NucleiConfig:
    backend: str = "classical"  # classical | vendor | cellpose
    channel: int = 0
    diameter_um: float = 8.0
    classical: ClassicalNucleiConfig = field(default_factory=ClassicalNucleiConfig)
    cellpose: CellposeConfig = field(default_factory=CellposeConfig)

    def validate(self, key: str, root: "PipelineConfig") -> None:
        """Its own values and its backend's section (``nuclei.<backend>``)."""
        positive(self, key, "diameter_um")
        require(
            self.channel >= 0, f"{key}.channel must be a channel index >= 0, got {self.channel}"
        )
        validate_section(root, f"{key}.{self.backend}")
