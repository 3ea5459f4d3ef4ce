"""Reader options: one declaration per reader feeds its docstring, ``stseg convert --help`` and
validation.

Bundles that lack vendor metadata (a cropped export, a JPEG mosaic without its transform) can only
be read with a few facts given by hand, so every reader declares the options it accepts; anything
else is refused with the accepted list, because a misspelt option silently ignored would produce a
chip on the wrong grid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str


#: Accepted by every reader.
COMMON = (
    Option("batch_rows", 1 << 20, "rows per streamed batch of the transcript table (memory bound)"),
)


def options_doc(options: Iterable[Option], title: str = "Reader options") -> str:
    """A plain-text list of options (name = default, then meaning) for docstrings and ``--help``."""
    lines = [f"{title} (``--reader-option KEY=VALUE``):", ""]
    for o in options:
        lines += [f"    {o.name} = {json.dumps(o.default)}", f"        {o.help}"]
    return "\n".join(lines) + "\n"


def resolve(platform: str, accepted: Iterable[Option], given: dict | None) -> dict:
    """Defaults overlaid with ``given``; an unknown key is an InputError listing the accepted
    ones.
    """
    accepted = tuple(accepted)
    names = {o.name for o in accepted}
    unknown = sorted(set(given or {}) - names)
    if unknown:
        raise InputError(
            f"unknown reader option(s) {', '.join(map(repr, unknown))} for platform {platform!r}; "
            f"accepted: {', '.join(sorted(names))}"
        )
    out = {o.name: o.default for o in accepted}
    out.update(given or {})
    return out


def parse_reader_options(items: Iterable[str] | None) -> dict:
    """``["min_qv=30", "image_bounds_um=[0,0,10,10]", "z_plane=max"]`` -> dict; JSON where it
    parses.
    """
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--reader-option expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out
