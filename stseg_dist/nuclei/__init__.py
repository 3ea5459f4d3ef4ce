"""Nuclei stage backends, selected by ``nuclei.backend``."""

from __future__ import annotations

from ..errors import ConfigError
from .base import NucleiBackend

#: What a reader's ``vendor_segmentation`` report field means, for run.json.
VENDOR_SOURCES = {
    "boundaries": "vendor nucleus polygons",
    "cells.zarr.zip": "vendor nucleus masks (cells.zarr.zip)",
    "transcript_flags": "rebuilt from the vendor's per-transcript nucleus flags",
}
BACKENDS = ("auto", "classical", "vendor", "cellpose")


def choose_backend(name: str, chip) -> tuple[str, str]:
    """The backend ``nuclei.backend`` names, and why: ``auto`` is the chip's vendor nuclei when it
    carries them (``nuclei.zarr``: vendor polygons, masks or nuclei rebuilt from per-transcript
    flags), else the classical stain segmentation.
    """
    if name != "auto":
        return name, f"nuclei.backend={name} was set"
    if chip.nuclei_url is None:
        return "classical", "auto: the chip has no vendor nuclei (nuclei.zarr): stain segmented"
    rep = _convert_report(chip)
    if rep.get("n_vendor_nuclei", 1) == 0:
        return (
            "classical",
            "auto: the chip's vendor nuclei (nuclei.zarr) are empty: stain segmented",
        )
    return "vendor", f"auto: the chip carries vendor nuclei ({_vendor_source(rep)})"


def _convert_report(chip) -> dict:
    from ..io import storage

    url = storage.join(chip.url, "convert_report.json")
    try:
        if storage.exists(url, chip.storage_options):
            return storage.read_json(url, chip.storage_options)
    except ValueError:
        pass
    return {}


def _vendor_source(rep: dict) -> str:
    how = rep.get("vendor_segmentation")
    how = VENDOR_SOURCES.get(how, how)
    n = rep.get("n_vendor_nuclei")
    if how:
        return f"{n} nuclei: {how}" if n else str(how)
    return "nuclei.zarr"


def get_backend(name: str, config, chip) -> NucleiBackend:
    name = choose_backend(name, chip)[0]
    if name == "classical":
        from .classical import ClassicalNuclei

        return ClassicalNuclei(config, chip)
    if name == "vendor":
        from .vendor import VendorNuclei

        return VendorNuclei(config, chip)
    if name == "cellpose":
        from .cellpose_backend import CellposeNuclei

        return CellposeNuclei(config, chip)
    raise ConfigError(
        f"unknown nuclei backend {name!r} (nuclei.backend); available: {', '.join(BACKENDS)}"
    )


__all__ = ["BACKENDS", "NucleiBackend", "choose_backend", "get_backend"]
