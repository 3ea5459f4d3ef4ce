"""Peak memory follows the tile size, not the chip size: a 16x larger chip, same tiles, about the
same peak. Measured on the in-process path, which holds the driver and every kernel at once."""

import os
import resource
import subprocess
import sys

import pytest

from stseg_dist.synth import synth_chip
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _peak_mb(chip, out):
    cmd = [sys.executable, "-m", "stseg_dist", "run", "--chip", chip, "--out", out, "--local", "--no-progress",
           "--set", "tiling.tile_size_um=300"]
    res = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def test_peak_memory_bounded_by_tile_not_chip(tmp_path):
    small = synth_chip(str(tmp_path / "small"), 600, 600, seed=1)
    large = synth_chip(str(tmp_path / "large"), 2400, 2400, seed=1)
    assert large["n_transcripts"] > 14 * small["n_transcripts"]
    peak_small = _peak_mb(str(tmp_path / "small"), str(tmp_path / "o1"))
    peak_large = _peak_mb(str(tmp_path / "large"), str(tmp_path / "o2"))  # max over both runs
    # the large chip's image + labels + transcripts alone would add far more than this margin
    whole_chip_mb = (4800 * 4800 * (2 + 4 + 4) + large["n_transcripts"] * 60) / 2**20
    print(f"peak RSS: small chip {peak_small:.0f} MB, 16x chip {peak_large:.0f} MB "
          f"(holding the large chip whole would need ~{whole_chip_mb:.0f} MB more)")
    assert peak_large - peak_small < 0.4 * whole_chip_mb
