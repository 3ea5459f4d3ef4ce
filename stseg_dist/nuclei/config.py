"""``nuclei``: the nuclei stage's settings and its backends' (read by :mod:`.classical`,
:mod:`.cellpose_backend`; the Cellpose section is shared with the membrane method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..imaging.cellpose import CellposeConfig
from ..settings import not_negative, one_of, positive, require, validate_section

if TYPE_CHECKING:
    from ..config import PipelineConfig


@dataclass
class ClassicalNucleiConfig:
    sigma_um: float = 0.6
    threshold: float | None = None  # absolute (normalised units when normalise); None: chip Otsu
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
    # "local": the shape term's distance is measured on the foreground's pixels that are brighter
    # than their surroundings (the stain smoothed over shape_sigma diameters above the stain
    # smoothed over shape_background diameters), so touching nuclei that the foreground joins
    # still have a neck at their darker seam; "foreground": on the foreground itself.
    shape_mask: str = "foreground"
    shape_sigma: float = 0.05
    shape_background: float = 0.5
    # A pixel stays in its nucleus only where the stain is at least this fraction of the stain at
    # the nucleus's seed (each nucleus cut at its own level: a bright nucleus's glow is not
    # nucleus); None: off.
    peak_fraction: float | None = None
    # The diameter the seeds and reach use is the median equivalent diameter of a first pass's
    # nuclei (nuclei.diameter_um for that pass), kept within [0.5, 1.5] x nuclei.diameter_um.
    learn_size: bool = False
    # A random forest trained in prepare on the chip's own confident first-pass nuclei (cores
    # against rims, seams and far background; nuclei/pixel_classifier.py) scores each pixel as
    # nucleus interior; classifier_weight x that probability, smoothed over classifier_sigma
    # diameters, is added to the seed surface (needs seeds: shape_intensity). No weights needed.
    pixel_classifier: bool = False
    classifier_weight: float = 0.25
    classifier_sigma: float = 0.15
    # After the watershed, a nucleus over oversize_area x the learned nucleus area (a disc of the
    # learned diameter) is bisected by stain-weighted 2-means, again on each part, keeping a cut
    # only where both parts look like nuclei and the stain dips by oversize_dip between them
    # (nuclei/oversize.py).
    oversize_split: bool = False
    oversize_area: float = 1.25
    oversize_dip: float = 0.1
    # Pixels where the stain is a valley across (the larger Hessian eigenvalue of the stain at
    # valley_sigma diameters, scale-normalised, above shape_valley in normalised stain units) are
    # taken out of the shape term's mask, so touching nuclei whose seam is too faint for the
    # local-contrast mask still get a neck there; 0: off.
    shape_valley: float = 0.0
    valley_sigma: float = 0.12

    def validate(self, key: str, root: PipelineConfig) -> None:
        bg = self.background_um
        require(bg is None or bg > 0, f"{key}.background_um must be positive or null, got {bg}")
        not_negative(self, key, "sigma_um", "min_area_um2")
        positive(
            self,
            key,
            "min_distance_um",
            "footprint_um",
            "seed_sigma",
            "seed_radius",
            "shape_sigma",
            "shape_background",
            "classifier_sigma",
            "valley_sigma",
        )
        require(
            self.threshold is None or self.threshold >= 0,
            f"{key}.threshold must not be negative, got {self.threshold}",
        )
        one_of(self, key, "foreground", ("otsu", "log_otsu"))
        one_of(self, key, "seeds", ("shape", "shape_intensity"))
        one_of(self, key, "shape_mask", ("foreground", "local"))
        require(
            self.shape_sigma < self.shape_background,
            f"{key}.shape_sigma must be below {key}.shape_background (the seam is finer than the "
            f"surroundings), got {self.shape_sigma} and {self.shape_background}",
        )
        q = self.normalise_percentiles
        require(
            isinstance(q, list) and len(q) == 2 and 0 <= q[0] < q[1] <= 100,
            f"{key}.normalise_percentiles must be two percentiles lo < hi in [0, 100], got {q}",
        )
        pf = self.peak_fraction
        require(
            pf is None or 0 < pf < 1, f"{key}.peak_fraction must be in (0, 1) or null, got {pf}"
        )
        require(
            self.seed_dynamic >= 0,
            f"{key}.seed_dynamic must not be negative, got {self.seed_dynamic}",
        )
        require(
            self.classifier_weight >= 0,
            f"{key}.classifier_weight must not be negative, got {self.classifier_weight}",
        )
        require(
            not self.pixel_classifier or self.seeds == "shape_intensity",
            f"{key}.pixel_classifier needs {key}.seeds: shape_intensity (it adds to that seed "
            f"surface), got seeds {self.seeds!r}",
        )
        require(
            self.oversize_area > 1,
            f"{key}.oversize_area must be above 1 (times the learned nucleus area), "
            f"got {self.oversize_area}",
        )
        require(
            0 < self.oversize_dip < 1,
            f"{key}.oversize_dip must be in (0, 1), got {self.oversize_dip}",
        )
        require(
            self.shape_valley >= 0,
            f"{key}.shape_valley must not be negative, got {self.shape_valley}",
        )
        require(
            self.intensity_weight >= 0,
            f"{key}.intensity_weight must not be negative, got {self.intensity_weight}",
        )


@dataclass
class NucleiConfig:
    # auto: the chip's vendor nuclei (nuclei.zarr) when it has them, else classical; the choice
    # and its reason go into run.json ("nuclei"). classical | vendor | cellpose pick one outright.
    backend: str = "auto"
    channel: int = 0
    diameter_um: float = 8.0
    classical: ClassicalNucleiConfig = field(default_factory=ClassicalNucleiConfig)
    cellpose: CellposeConfig = field(default_factory=CellposeConfig)

    def validate(self, key: str, root: PipelineConfig) -> None:
        """Its own values and its backend's section (``nuclei.<backend>``)."""
        positive(self, key, "diameter_um")
        require(
            self.channel >= 0, f"{key}.channel must be a channel index >= 0, got {self.channel}"
        )
        # auto falls back to classical where the chip has no vendor nuclei: check that section too
        backend = "classical" if self.backend == "auto" else self.backend
        validate_section(root, f"{key}.{backend}")
