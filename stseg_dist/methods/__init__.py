"""Cell methods, selected by ``cells.method`` in the config: one module or package per method
(``expansion``, ``ucs``, ``genesegnet``, ``sslcst``, ``membrane``); :mod:`.common` holds what
the learned ones share (bin grid, ownership, patches, torch base)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import CellMethod, PrepareContext, TileData, TileResult, TileTranscripts


def _registry() -> dict[str, type[CellMethod] | dict[str, type[CellMethod]]]:
    """Each method's class, or its classes by ``cells.<name>.variant`` where variants differ in
    code (a variant that differs only in settings is one class)."""
    from .expansion import ExpansionMethod
    from .genesegnet import GeneSegNetMethod
    from .membrane import MembraneMethod, PaperMembraneMethod
    from .sslcst import SSLCSTMethod
    from .ucs import UCSMethod

    return {
        "expansion": ExpansionMethod,
        "genesegnet": GeneSegNetMethod,
        "membrane": {"stseg": MembraneMethod, "paper": PaperMembraneMethod},
        "sslcst": SSLCSTMethod,
        "ucs": UCSMethod,
    }


def available_methods() -> list[str]:
    return sorted(_registry())


def _import_method(path: str) -> type[CellMethod]:
    """``package.module:ClassName`` -> the class, for methods that live outside this package."""
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cells.method {path!r}: cannot import it: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, CellMethod)):
        raise ConfigError(f"cells.method {path!r} is not a CellMethod subclass")
    return cls


def get_method(name: str, config, platform: str = "generic") -> CellMethod:
    """A method by registered name, or by import path ``module:Class`` (third-party methods)."""
    if ":" in name:
        return _import_method(name)(config, platform)
    registry = _registry()
    if name not in registry:
        raise ConfigError(
            f"unknown cell method {name!r} (cells.method); available: {', '.join(sorted(registry))}"
        )
    cls = registry[name]
    if isinstance(cls, dict):
        # an unknown variant gets the first class, whose constructor's validation names it
        cls = cls.get(getattr(config.cells, name).variant, next(iter(cls.values())))
    return cls(config, platform)


__all__ = [
    "CellMethod",
    "PrepareContext",
    "TileData",
    "TileResult",
    "TileTranscripts",
    "get_method",
    "available_methods",
]
