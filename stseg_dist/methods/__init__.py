"""Cell methods, selected by ``cells.method`` in the config."""

from __future__ import annotations

from ..errors import ConfigError
from .base import CellMethod, PrepareContext, TileData, TileTranscripts


def _registry() -> dict[str, type[CellMethod]]:
    from .expansion import ExpansionMethod

    methods: dict[str, type[CellMethod]] = {"expansion": ExpansionMethod}
    try:
        from .ucs import UCSMethod
    except ImportError:  # UCS is optional until its module lands
        pass
    else:
        methods["ucs"] = UCSMethod
    return methods


def available_methods() -> list[str]:
    return sorted(_registry())


def get_method(name: str, config, platform: str = "generic") -> CellMethod:
    registry = _registry()
    if name not in registry:
        raise ConfigError(
            f"unknown cell method {name!r} (cells.method); available: {', '.join(sorted(registry))}"
        )
    return registry[name](config, platform)


__all__ = ["CellMethod", "PrepareContext", "TileData", "TileTranscripts", "get_method", "available_methods"]
