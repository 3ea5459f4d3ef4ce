"""One small finished run shared by the output-format tests (AnnData, SpatialData, exports)."""

from __future__ import annotations

import pytest

from tests.conftest import make_blob_chip, small_tiles_config

ORIGIN_UM = (100.0, 50.0)  # not 0: a missing translation to the chip origin shows


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A 100 x 130 µm chip at ORIGIN_UM, run in-process over ~30 tiles: (chip path, run path)."""
    from stseg_dist.driver import run_pipeline

    root = tmp_path_factory.mktemp("small_run")
    chip = make_blob_chip(
        root / "chip", shape=(200, 260), n_nuclei=40, n_transcripts=8_000, origin_um=ORIGIN_UM
    )
    run_pipeline(chip, str(root / "run"), small_tiles_config(), local=True)
    return root / "chip", root / "run"
