"""https:// (README's third protocol) end to end: a chip served over HTTP on 127.0.0.1 by the
standard library's server is read through fsspec's HTTP filesystem (read only: outputs go to
a writable location) and gives the same cells as the chip on disk.
"""

from __future__ import annotations

import functools
import http.server
import threading

import pandas as pd
import pytest

from stseg_dist.cli import main
from tests.conftest import make_blob_chip

pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp (fsspec[http])")

FAST = ["--local", "--no-progress", "--no-spatialdata", "--set", "tiling.tile_size_um=40"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test's output stays readable
        pass


@pytest.fixture
def served(tmp_path):
    handler = functools.partial(_Quiet, directory=str(tmp_path / "www"))
    (tmp_path / "www").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path / "www", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_chip_over_http(served, tmp_path, capsys):
    www, base = served
    chip = make_blob_chip(www / "chip", shape=(80, 80), n_nuclei=8, n_transcripts=800)
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(["run", "--chip", f"{base}/chip", "--out", str(out), *FAST]) == 0, (
        capsys.readouterr().err
    )
    assert main(["run", "--chip", chip, "--out", str(ref), *FAST]) == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "cells.parquet"), pd.read_parquet(ref / "cells.parquet")
    )
    assert (out / "report.html").exists()
