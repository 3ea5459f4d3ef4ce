"""A chip read from, and outputs written to, a real S3 protocol server (moto in server mode)."""

import json

import numpy as np
import pandas as pd
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from tests.conftest import make_blob_chip

pytestmark = pytest.mark.ray


def test_chip_on_s3_to_outputs_on_s3(s3, tmp_path, ray_module):
    fs, opts = s3
    local_chip = make_blob_chip(tmp_path / "chip", n_transcripts=5000)
    fs.put(local_chip, "stseg-test/chips/c1", recursive=True)
    cfg = load_config(
        overrides=parse_set(
            ["runtime.progress=false", "tiling.tile_size_um=60", "tiling.chunk_px=32"]
        ),
        use_env=False,
    )
    summary = run_pipeline(
        "s3://stseg-test/chips/c1", "s3://stseg-test/runs/r1", cfg, storage_options=opts
    )
    assert summary["status"] == "complete" and summary["n_tiles"] > 1
    # reference: the same chip on local disk
    ref = run_pipeline(local_chip, str(tmp_path / "ref"), cfg, local=True)
    with fs.open("stseg-test/runs/r1/cells.parquet", "rb") as fh:
        cells = pd.read_parquet(fh)
    pd.testing.assert_frame_equal(cells, pd.read_parquet(tmp_path / "ref" / "cells.parquet"))
    run = json.loads(fs.cat("stseg-test/runs/r1/run.json"))
    assert run["counts"] == ref["counts"]
    from stseg_dist.io.storage import open_zarr_array

    remote = open_zarr_array("s3://stseg-test/runs/r1/labels.zarr/cells", "r", opts)[:]
    local = open_zarr_array(str(tmp_path / "ref" / "labels.zarr" / "cells"), "r")[:]
    np.testing.assert_array_equal(remote, local)
    assert fs.exists("stseg-test/runs/r1/cells.h5ad") and fs.exists(
        "stseg-test/runs/r1/transcripts.parquet"
    )
    # checkpoints of a finished run are cleaned up
    assert not fs.exists("stseg-test/runs/r1/_work/" + run["run_key"])


def test_cellpose_model_from_s3_url(s3, tmp_path, monkeypatch):
    from stseg_dist.errors import InputError
    from stseg_dist.imaging.cellpose import resolve_model_path
    from tests.nuclei.test_cellpose import write_random_cellpose_model

    fs, opts = s3
    monkeypatch.setenv("STSEG_MODEL_CACHE", str(tmp_path / "cache"))
    model = write_random_cellpose_model(tmp_path / "m.pt")
    fs.put(model, "stseg-test/models/cpsam_tiny")
    local = resolve_model_path("s3://stseg-test/models/cpsam_tiny", opts)
    assert open(local, "rb").read() == open(model, "rb").read()
    assert (
        resolve_model_path("s3://stseg-test/models/cpsam_tiny", opts) == local
    )  # cached, not refetched
    with pytest.raises(InputError, match="not found"):
        resolve_model_path("s3://stseg-test/models/missing", opts)


def test_membrane_stain_read_through_track_lines_from_s3(s3, tmp_path):
    """Tiles read the stain through the chip-wide transform with the run's storage options (the
    state holds none): the same cells as the chip on local disk.
    """
    from tests.methods.test_membrane import config
    from tests.methods.test_membrane_registration import TRACK, transformed_chip

    fs, opts = s3
    local_chip = transformed_chip(tmp_path / "local", 150, 3, {"rotation_deg": 90, "flip": True})
    fs.put(local_chip, "stseg-test/chips/stain", recursive=True)
    cfg = config("cells.method=membrane", TRACK, "tiling.tile_size_um=75")
    run_pipeline(
        "s3://stseg-test/chips/stain",
        str(tmp_path / "s3out"),
        cfg,
        storage_options=opts,
        local=True,
    )
    run_pipeline(local_chip, str(tmp_path / "ref"), cfg, local=True)
    from stseg_dist.io.storage import open_zarr_array

    remote = open_zarr_array(str(tmp_path / "s3out" / "labels.zarr" / "cells"), "r")[:]
    local = open_zarr_array(str(tmp_path / "ref" / "labels.zarr" / "cells"), "r")[:]
    assert remote.max() > 0
    np.testing.assert_array_equal(remote, local)
