"""A finished run's files, checked once for every export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import constants as K
from ..errors import InputError
from ..io import storage

NEEDED = (
    K.RUN_JSON,
    f"{K.LABELS_ZARR}/{K.LABELS_CELLS}",
    f"{K.LABELS_ZARR}/{K.LABELS_NUCLEI}",
    K.CELLS_PARQUET,
    K.CELLS_H5AD,
    K.TRANSCRIPTS_PARQUET,
    K.CELL_BOUNDARIES_PARQUET,
    K.NUCLEUS_BOUNDARIES_PARQUET,
)


@dataclass(frozen=True)
class RunFiles:
    """Paths of one complete run and what run.json says about it."""

    root: Path
    run: dict
    chip: object  # stseg_dist.io.chip.Chip: the image and its µm grid

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def pixel_size_um(self) -> float:
        return float(self.chip.pixel_size_um)

    @property
    def origin_um(self) -> tuple[float, float]:
        x0, y0 = self.chip.origin_um
        return float(x0), float(y0)


def open_run(run: str, chip: str | None = None) -> RunFiles:
    """Check that ``run`` is a complete run folder with every output an export reads."""
    from ..io.chip import open_chip

    if storage.is_remote(str(run)):
        raise InputError(f"{run}: exports read a local run folder (copy the run first)")
    root = Path(run)
    if not root.is_dir():
        raise InputError(f"run folder not found: {root}")
    for name in NEEDED:
        p = root / name
        if not p.exists():
            raise InputError(f"{p}: missing; an export needs a complete run ({', '.join(NEEDED)})")
    info = storage.read_json(str(root / K.RUN_JSON))
    if info.get("status") != "complete":
        raise InputError(
            f"{root / K.RUN_JSON}: run status is {info.get('status')!r}, not 'complete'; "
            "re-run the same stseg run command to finish it"
        )
    chip_url = chip or _recorded_chip(root, info)
    if not chip_url:
        raise InputError(f"{root / K.RUN_JSON}: names no chip; give the chip with --chip")
    try:
        handle = open_chip(chip_url)
    except InputError as exc:
        raise InputError(
            f"the run's chip (the image source) cannot be opened: {exc}; give it with --chip"
        ) from exc
    labels = storage.open_zarr_array(str(root / K.LABELS_ZARR / K.LABELS_CELLS), "r")
    if tuple(labels.shape) != tuple(handle.shape_yx):
        raise InputError(
            f"{chip_url}: image is {handle.shape_yx[0]} x {handle.shape_yx[1]} px but the run's "
            f"labels are {labels.shape[0]} x {labels.shape[1]}: not this run's chip"
        )
    return RunFiles(root, info, handle)


def _recorded_chip(root: Path, info: dict) -> str | None:
    """The chip run.json names. Runs record absolute locations; an older run.json may hold a
    path relative to the directory the run was started in, found again from its ``out``.
    """
    import os

    chip = info.get("chip")
    if not chip or storage.is_remote(str(chip)) or os.path.isabs(str(chip)):
        return chip
    out = str(info.get("out") or "")
    here = str(root.resolve())
    if out and not os.path.isabs(out) and here.endswith(os.path.normpath(out)):
        start_dir = here[: len(here) - len(os.path.normpath(out))]
        candidate = os.path.join(start_dir, str(chip))
        if os.path.exists(candidate):
            return candidate
    return chip
