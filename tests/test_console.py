"""A successful `stseg run` prints its progress bars, the report path and the summary: no Ray
lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, make_blob_chip

# the store's tasks (points, raster blocks) run beside the boundaries and show no bar of their own
STAGES = ("scan", "histogram", "nuclei", "cells", "boundaries")
BAR = re.compile(r"^(\w+): +\d+%\|.*\| (\d+)/(\d+) \[")
# Abseil's own diagnostic from inside a Ray worker's C++ core ("(_run_task pid=N) [mutex.cc : 452]
# RAW: Lock blocking ..."), forwarded by Ray under heavy load: Ray's, not a line of ours.
RAY_ABSL_RAW = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+\)(\x1b\[0m)? \[mutex\.cc : \d+\] RAW: ")
# A line Ray forwards from a worker process, and the start of a worker's crash report (Abseil's
# failure-signal handler or Python's faulthandler). Seen once in CI: a task worker aborted under
# load and the run still completed; the report's lines are Ray's, not ours.
FORWARDED = re.compile(r"^(?:\x1b\[\d+m)?\(\w+ pid=(\d+)\)(?:\x1b\[0m)? ")
CRASH_START = re.compile(r"\*\*\* SIG[A-Z]+ received at time=|Fatal Python error: ")


@pytest.mark.ray
def test_run_console_shows_only_progress_and_summary(tmp_path):
    chip = make_blob_chip(tmp_path / "chip", shape=(120, 160), n_nuclei=15, n_transcripts=2_000)
    # As a user runs it: no RAY_AUTH_MODE (the tests' own setting), a fresh embedded Ray, a
    # method in restartable actors (the path that made Ray's core worker print an error line).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stseg_dist",
            "run",
            "--chip",
            chip,
            "--out",
            str(out),
            "--set",
            "cells.method=tests.plugin_methods:SlowActorExpansion",
            "--set",
            "tiling.tile_size_um=40",
            "--set",
            "tiling.chunk_px=16",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("complete: "), proc.stdout

    starts: dict[str, int] = {}
    finals: set[str] = set()
    crashed: set[str] = set()  # worker pids whose crash report Ray forwarded
    for piece in re.split(r"[\r\n]+", proc.stderr):
        if not piece.strip():
            continue
        if piece in (
            f"report: {out / 'report.html'}",
            f"spatialdata: {out / 'spatialdata.zarr'}",
            "spatialdata.zarr: not written (pip install 'stseg-dist[spatialdata]', then stseg "
            "export)",
        ):
            continue
        if RAY_ABSL_RAW.match(piece):
            continue
        forwarded = FORWARDED.match(piece)
        if forwarded and CRASH_START.search(piece):
            crashed.add(forwarded.group(1))
        if forwarded and forwarded.group(1) in crashed:
            continue
        m = BAR.match(piece)
        assert m and m.group(1) in STAGES, f"unexpected console line: {piece!r}"
        if m.group(2) == "0":
            starts[m.group(1)] = starts.get(m.group(1), 0) + 1
        if m.group(2) == m.group(3):
            finals.add(m.group(1))
    assert starts == {stage: 1 for stage in STAGES}  # one bar per stage ...
    assert finals == set(STAGES)  # ... each run to its end
    assert (out / "report.html").exists()
