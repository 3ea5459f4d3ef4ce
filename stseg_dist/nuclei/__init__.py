"""Nuclei stage backends, selected by ``nuclei.backend``."""

from __future__ import annotations

from ..errors import ConfigError
from .base import NucleiBackend

BACKENDS = ("classical", "vendor", "cellpose")


def get_backend(name: str, config, chip) -> NucleiBackend:
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


__all__ = ["BACKENDS", "NucleiBackend", "get_backend"]
