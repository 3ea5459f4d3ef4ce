"""Peak memory follows the tile size, not the chip size: a 16x larger chip, same tiles, about the
same growth. Measured on the in-process path, which holds the driver and every kernel at once,
each run in a fresh interpreter that reports its own peak before and after the run. The optional
SpatialData export is left out: it is measured on its own by ``stseg bench -- --exports``.
"""

import json
import os
import subprocess
import sys

import pytest

from stseg_dist.synth import synth_chip
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc"),
]

#: Runs one chip in this (fresh) interpreter; prints its resident set (KiB) after the imports and
#: its peak during the run. The kernel's high-water mark is reset after the imports
#: (clear_refs 5), so the transient peak of importing torch/ray does not hide the run; only this
#: process counts, not the other children of pytest.
_CHILD = """
import json, sys
import stseg_dist.driver, stseg_dist.cli, stseg_dist.report  # imported before the baseline

def status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status_kib("VmRSS")
rc = stseg_dist.cli.main(["run", "--chip", sys.argv[1], "--out", sys.argv[2], "--local",
                          "--no-progress", "--no-spatialdata", "--set", "tiling.tile_size_um=300"])
print(json.dumps({"rc": rc, "base_kib": base, "peak_kib": status_kib("VmHWM")}))
"""


def _growth_mb(chip, out):
    """Peak RSS growth of one run over the interpreter with everything imported, in MiB."""
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, chip, out],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    assert rec["rc"] == 0
    return (rec["peak_kib"] - rec["base_kib"]) / 1024


def test_peak_memory_bounded_by_tile_not_chip(tmp_path):
    small = synth_chip(str(tmp_path / "small"), 600, 600, seed=1)
    large = synth_chip(str(tmp_path / "large"), 2400, 2400, seed=1)
    assert large["n_transcripts"] > 14 * small["n_transcripts"]
    grow_small = _growth_mb(str(tmp_path / "small"), str(tmp_path / "o1"))
    grow_large = _growth_mb(str(tmp_path / "large"), str(tmp_path / "o2"))
    # the large chip's image + labels + transcripts alone would add far more than this margin
    whole_chip_mb = (4800 * 4800 * (2 + 4 + 4) + large["n_transcripts"] * 60) / 2**20
    print(
        f"peak RSS growth per run: small chip {grow_small:.0f} MB, 16x chip {grow_large:.0f} MB "
        f"(holding the large chip whole would need ~{whole_chip_mb:.0f} MB more)"
    )
    assert grow_small > 0
    assert grow_large - grow_small < 0.4 * whole_chip_mb
