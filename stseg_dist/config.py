"""Typed pipeline configuration: the sections composed, YAML presets and ``--set`` overrides.

Each method's (and backend's) section is declared beside its code (``methods/ucs/config.py``...)
and registered with the method (``CellMethod.config_type``); this module composes the sections,
builds them from YAML and validates them (:mod:`stseg_dist.settings` holds the rules).

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
from .lifecycle import Resources
from .methods.expansion.config import ExpansionConfig
from .methods.genesegnet.config import GeneSegNetConfig
from .methods.membrane.config import MembraneConfig
from .methods.sslcst.config import SSLCSTConfig
from .methods.ucs.config import UCSConfig
from .nuclei.config import NucleiConfig
from .settings import positive, require, validate_section
from .spillover import SpilloverConfig


@dataclass
class TilingConfig:
    """Tile grid: a core that owns pixels and transcripts, plus a halo of context."""

    tile_size_um: float = 500.0
    halo_um: float | None = None  # None: derived from the method's reach (tiling.halo_um)
    chunk_px: int = 256  # output zarr chunk; tile cores are whole multiples of it

    def validate(self, key: str, root: PipelineConfig) -> None:
        positive(self, key, "tile_size_um", "chunk_px")
        require(
            self.halo_um is None or self.halo_um >= 0,
            f"{key}.halo_um must not be negative, got {self.halo_um}",
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
    # a transcript-level pass after any method's cells (stseg_dist/spillover.py); off by default
    # (on with the UCS coverage knob)
    spillover: SpilloverConfig = field(default_factory=SpilloverConfig)

    def validate(self, key: str, root: PipelineConfig) -> None:
        """Its own values and the selected method's section (``cells.<method>``)."""
        positive(self, key, "cell_diameter_um")
        validate_section(root, f"{key}.{self.method}")
        if self.spillover.active(root):
            validate_section(root, f"{key}.spillover")


@dataclass
class ResourcesConfig:
    """Per stage, what overrides the resources its plugin declares (the same type: ``Resources``);
    ``scan`` also sizes the plugin-free passes (the boundaries).
    """

    nuclei: Resources = field(default_factory=Resources)
    cells: Resources = field(default_factory=Resources)
    scan: Resources = field(default_factory=Resources)

    def validate(self, key: str, root: PipelineConfig) -> None:
        for name in ("nuclei", "cells", "scan"):
            getattr(self, name).validate(f"{key}.{name}", root)


@dataclass
class RuntimeConfig:
    max_in_flight: int | None = None  # None: 2 x the cluster's CPUs
    max_retries: int = 3
    progress: bool = True
    fail_fast: bool = False

    def validate(self, key: str, root: PipelineConfig) -> None:
        require(
            self.max_in_flight is None or self.max_in_flight >= 1,
            f"{key}.max_in_flight must be at least 1, got {self.max_in_flight}",
        )
        require(self.max_retries >= 0, f"{key}.max_retries must be >= 0, got {self.max_retries}")


@dataclass
class PipelineConfig:
    tiling: TilingConfig = field(default_factory=TilingConfig)
    nuclei: NucleiConfig = field(default_factory=NucleiConfig)
    cells: CellsConfig = field(default_factory=CellsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> PipelineConfig:
        """Check the values of every section this run uses (ranges, choices); errors name the key.

        Unknown keys and wrong types are refused earlier, when the config is built; a section of
        a method or backend that is not selected is checked only when it is.
        """
        for name in ("tiling", "nuclei", "cells", "resources", "runtime"):
            getattr(self, name).validate(name, self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Settings that moved, named in the error a config using the old key gets (by full key, or by
#: name wherever it appears).
MOVED = {
    **{
        f"cells.membrane.{k}": "the membrane's Cellpose settings are one section: "
        f"cells.membrane.cellpose.{k}"
        for k in ("model", "flow_threshold", "cellprob_threshold", "batch_size", "storage_options")
    },
    "num_gpus": "GPUs per task or actor are set once per stage: resources.nuclei.num_gpus or "
    "resources.cells.num_gpus",
    "num_actors": "actor pools are sized once per stage: resources.nuclei.actors or "
    "resources.cells.actors",
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
