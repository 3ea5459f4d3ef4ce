"""The rules every settings section validates its values with, and how a section is found.

Below :mod:`stseg_dist.config` (which composes the sections) and the method and backend packages
(which declare them), so a section lives beside the code that reads it without an import cycle.
Each rule raises :class:`~stseg_dist.errors.ConfigError` naming the dotted key at fault.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError


def validate_section(root: Any, key: str) -> None:
    """Validate the section at dotted ``key`` (e.g. ``cells.ucs``) if it exists and has rules;
    a plugin's name (``module:Class``) or a section without rules passes.
    """
    node: Any = root
    for part in key.split("."):
        node = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
    if dataclasses.is_dataclass(node) and hasattr(node, "validate"):
        node.validate(key, root)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def positive(section: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        require(value > 0, f"{key}.{name} must be positive, got {value}")


def positive_or_none(section: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        require(value is None or value > 0, f"{key}.{name} must be positive or null, got {value}")


def not_negative(section: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        require(value >= 0, f"{key}.{name} must not be negative, got {value}")


def at_least_one(section: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        require(value >= 1, f"{key}.{name} must be at least 1, got {value}")


def in_range(section: Any, key: str, name: str, interval: str) -> None:
    """``interval`` in mathematical notation, e.g. ``(0, 1]``."""
    value = getattr(section, name)
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    ok = (lo < value if interval[0] == "(" else lo <= value) and (
        value < hi if interval[-1] == ")" else value <= hi
    )
    require(ok, f"{key}.{name} must be in {interval}, got {value}")


def one_of(section: Any, key: str, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(section, name)
    require(value in choices, f"{key}.{name} must be one of {', '.join(choices)}, got {value!r}")
