"""Output folder protection: a run never writes among unrelated files, and a run rejected
before it starts leaves no folder behind.

A folder is a stseg run (and a re-run resumes or replaces it) when it holds ``run.json``, the
work dir ``_work`` or the run lock, or nothing but the files a run writes (a run whose run.json
was removed to have it redone); any other non-empty folder is refused unless the caller says
``overwrite`` (the run then writes its outputs beside the files there, removing none).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from . import constants as K
from .errors import OutputError
from .io import storage
from .outputs import FINAL_OUTPUTS
from .runlock import LOCK_NAME

RUN_MARKERS = (K.RUN_JSON, K.WORK_DIR, LOCK_NAME)
#: what a run publishes into OUT: a folder holding only these is a run's, even without run.json
RUN_OUTPUTS = frozenset((*FINAL_OUTPUTS, K.REPORT_HTML))


def _entries(out_url: str, so: dict | None) -> list[str] | None:
    """Names in the folder; None if it does not exist (or is a file: checked elsewhere)."""
    fs, path = storage.fs_and_path(out_url, so)
    try:
        if not fs.isdir(path):
            return None
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return None


def check_output_folder(out_url: str, so: dict | None = None, overwrite: bool = False) -> None:
    """Refuse a non-empty ``out_url`` that is not a stseg run, unless ``overwrite``."""
    names = _entries(out_url, so)
    if not names or overwrite or any(n in RUN_MARKERS for n in names):
        return
    if set(names) <= RUN_OUTPUTS:
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise OutputError(
        f"output {out_url} is not empty and holds no stseg run ({shown}); choose an empty or "
        "new folder, or pass --overwrite to write the outputs beside these files"
    )


def _holds_files(path: str) -> bool:
    for _, _, files in os.walk(path):
        if files:
            return True
    return False


@contextlib.contextmanager
def guarded_output(out_url: str, so: dict | None = None, overwrite: bool = False) -> Iterator[None]:
    """Check the folder, then run the body; if the body fails and this call found no folder,
    remove what is left when it holds no file (the run was rejected before writing anything).

    A run that failed after writing (checkpoints in ``_work``, outputs) keeps them: re-running
    the same command resumes it. Object stores have no empty folders to leave.
    """
    check_output_folder(out_url, so, overwrite)
    local = not storage.is_remote(out_url)
    path = str(out_url).removeprefix("file://")
    created = local and not os.path.exists(path)
    try:
        yield
    except BaseException:
        if created and os.path.isdir(path) and not _holds_files(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
