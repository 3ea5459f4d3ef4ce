"""gs:// end to end on a local Google Cloud Storage emulator (gcp-storage-emulator, from PyPI),
as S3 is tested on the moto server: the chip is read from a bucket and every output written
to one, through the CLI with the emulator named the way users name theirs
(``STORAGE_EMULATOR_HOST``; real credentials come from the environment in the same way).
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest

from stseg_dist.cli import main
from tests.conftest import make_blob_chip

pytest.importorskip("gcsfs", reason="gcsfs is a dependency: pip install -e '.[test]'")
pytest.importorskip(
    "gcp_storage_emulator", reason="the GCS emulator is a test dependency: pip install -e '.[test]'"
)

BUCKET = "stseg-test"


@pytest.fixture(scope="module")
def gcs():
    """An in-memory GCS emulator on 127.0.0.1 with bucket ``stseg-test``: (gcsfs fs, endpoint).

    gs:// goes to gcsfs's core filesystem here: its default (ExtendedGcsFileSystem) first asks
    the gRPC storage-control API for the bucket type, which the emulator does not serve (each
    call waits 60 s, then falls back to the core filesystem anyway).
    """
    import fsspec
    from gcp_storage_emulator.server import create_server
    from gcsfs.core import GCSFileSystem

    before = {p: fsspec.get_filesystem_class(p) for p in ("gs", "gcs")}
    for p in before:
        fsspec.register_implementation(p, GCSFileSystem, clobber=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield GCSFileSystem(endpoint_url=endpoint, token="anon", project="test"), endpoint
    server.stop()
    for p, cls in before.items():
        fsspec.register_implementation(p, cls, clobber=True)


def test_chip_on_gcs_to_outputs_on_gcs(gcs, tmp_path, monkeypatch, capsys):
    fs, endpoint = gcs
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    local_chip = make_blob_chip(tmp_path / "chip", shape=(80, 80), n_nuclei=8, n_transcripts=800)
    fs.put(local_chip, f"{BUCKET}/chips/c1", recursive=True)
    fast = ["--local", "--no-progress", "--no-spatialdata", "--set", "tiling.tile_size_um=40"]
    chip, out = f"gs://{BUCKET}/chips/c1", f"gs://{BUCKET}/runs/r1"
    assert main(["run", "--chip", chip, "--out", out, *fast]) == 0, capsys.readouterr().err
    assert main(["run", "--chip", local_chip, "--out", str(tmp_path / "ref"), *fast]) == 0

    run = json.loads(fs.cat(f"{BUCKET}/runs/r1/run.json"))
    assert run["status"] == "complete" and run["chip"] == chip and run["out"] == out
    with fs.open(f"{BUCKET}/runs/r1/cells.parquet", "rb") as fh:
        cells = pd.read_parquet(fh)
    pd.testing.assert_frame_equal(cells, pd.read_parquet(tmp_path / "ref" / "cells.parquet"))
    from stseg_dist.io.storage import open_zarr_array

    remote = open_zarr_array(f"{out}/labels.zarr/cells", "r")[:]
    local = open_zarr_array(str(tmp_path / "ref" / "labels.zarr" / "cells"), "r")[:]
    np.testing.assert_array_equal(remote, local)
    for name in ("transcripts.parquet", "cells.h5ad", "report.html", "cell_boundaries.parquet"):
        assert fs.exists(f"{BUCKET}/runs/r1/{name}"), name
    assert not fs.exists(f"{BUCKET}/runs/r1/.stseg-lock")  # released
