"""Cell methods, selected by ``cells.method`` in the config: one module or package per method
(``expansion``, ``ucs``, ``genesegnet``, ``sslcst``, ``membrane``); :mod:`.common` holds what
the learned ones share (bin grid, ownership, patches, torch base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..io.chip import ChipFacts
    from .base import CellMethod

_BASE = ("CellMethod", "PrepareContext", "TileData", "TileResult", "TileTranscripts")


def __getattr__(name: str):
    """The interface (:mod:`.base`) on first use, so importing a method's settings
    (``methods.ucs.config``, composed by :mod:`stseg_dist.config`) stays light.
    """
    if name in _BASE:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registry() -> dict[str, type[CellMethod] | dict[str, type[CellMethod]]]:
    """Each method's class, or its classes by ``cells.<name>.variant`` where variants differ in
    code (a variant that differs only in settings is one class).
    """
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
    from .base import CellMethod

    if not (isinstance(cls, type) and issubclass(cls, CellMethod)):
        raise ConfigError(f"cells.method {path!r} is not a CellMethod subclass")
    return cls


def get_method(name: str, config, facts: ChipFacts | None = None) -> CellMethod:
    """A method by registered name, or by import path ``module:Class`` (third-party methods),
    told the chip's facts (``chip.meta.facts``; None: a 1 µm bin, an imaged stain).
    """
    if ":" in name:
        return _import_method(name)(config, facts)
    registry = _registry()
    if name not in registry:
        raise ConfigError(
            f"unknown cell method {name!r} (cells.method); available: {', '.join(sorted(registry))}"
        )
    cls = registry[name]
    if isinstance(cls, dict):
        # an unknown variant gets the first class, whose constructor's validation names it
        cls = cls.get(getattr(config.cells, name).variant, next(iter(cls.values())))
    return cls(config, facts)


__all__ = [
    "CellMethod",
    "PrepareContext",
    "TileData",
    "TileResult",
    "TileTranscripts",
    "get_method",
    "available_methods",
]
