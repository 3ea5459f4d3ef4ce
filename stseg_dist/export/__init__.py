"""Exports of a finished run for other tools: SpatialData (scverse) and the Xenium Explorer.

Each export checks first that the run is complete and that every file it reads is there (the
error names the first one missing), writes into a staging folder beside the target and moves it
into place at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from ..io import storage
from ._run import RunFiles, open_run

FORMATS = ("spatialdata", "xenium-explorer")
DEFAULT_NAMES = {"spatialdata": "spatialdata.zarr", "xenium-explorer": "xenium_explorer"}

__all__ = ["FORMATS", "RunFiles", "export_run", "open_run"]


def export_run(
    run: str,
    to: str,
    out: str | None = None,
    chip: str | None = None,
    overwrite: bool = True,
    table: str | None = None,
) -> str:
    """Export the finished run folder ``run`` to format ``to``; returns the path written.

    ``out`` defaults to ``RUN/spatialdata.zarr`` or ``RUN/xenium_explorer``; ``chip`` replaces
    the chip recorded in ``run.json`` (where the image is read from); ``table`` (Explorer only)
    is the user's annotated AnnData whose categorical ``obs`` columns become cell groups.
    """
    if to not in FORMATS:
        raise InputError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    if table and to != "xenium-explorer":
        raise InputError("--table is for --to xenium-explorer (cell groups from obs columns)")
    files = open_run(run, chip)  # raises, naming the missing file, before anything is written
    target = Path(out) if out else Path(run) / DEFAULT_NAMES[to]
    if to == "spatialdata":
        from .spatialdata import require_spatialdata
        from .spatialdata import write_spatialdata as writer

        require_spatialdata()  # a clear error naming the extra, before anything is written
        return str(_staged(target, overwrite, lambda path: writer(files, path)))
    from .xenium import read_table, write_explorer

    if table:
        read_table(table)  # a clear error before anything is written
    return str(_staged(target, overwrite, lambda path: write_explorer(files, path, table)))


def _staged(target: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    if storage.is_remote(str(target)):
        raise InputError(f"{target}: exports are written to a local folder")
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        write(staging)
        if target.exists():
            old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
