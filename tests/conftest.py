"""Shared fixtures: a small constructed chip, the shared real data, one Ray per module."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared real data not found at {path} (expected ../shared/data beside the repo)"
        )
    return path


def make_blob_chip(
    path,
    shape=(240, 320),
    pixel_size_um=0.5,
    n_nuclei=40,
    n_transcripts=20_000,
    seed=0,
    chunk_px=64,
    transcripts: pa.Table | None = None,
    origin_um=(0.0, 0.0),
    row_group_size=2_000,
):
    """A small chip with Gaussian-blob nuclei and transcripts scattered around them.

    For constructed cases (bad inputs, accounting) where the generator's realism is not needed.
    """
    from stseg_dist.io.chip_writer import ChipWriter

    rng = np.random.default_rng(seed)
    h, w = shape
    cy = rng.uniform(8, h - 8, n_nuclei)
    cx = rng.uniform(8, w - 8, n_nuclei)
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(200, 20, shape).astype(np.float32)
    for y, x in zip(cy, cx, strict=True):
        img += 3000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 4.0**2))
    if transcripts is None:
        k = rng.integers(0, n_nuclei, n_transcripts)
        x0, y0 = origin_um
        tx = np.clip(
            x0 + cx[k] * pixel_size_um + rng.normal(0, 3, n_transcripts),
            x0,
            x0 + w * pixel_size_um - 1e-6,
        )
        ty = np.clip(
            y0 + cy[k] * pixel_size_um + rng.normal(0, 3, n_transcripts),
            y0,
            y0 + h * pixel_size_um - 1e-6,
        )
        genes = np.array([f"G{i:02d}" for i in range(12)])[rng.integers(0, 12, n_transcripts)]
        order = np.lexsort((tx // 20, ty // 20))
        transcripts = pa.table({"x": tx[order], "y": ty[order], "gene": genes[order]})
    with ChipWriter(
        str(path),
        shape,
        pixel_size_um,
        origin_um=origin_um,
        platform="test",
        chunk_px=chunk_px,
        overwrite=True,
    ) as wr:
        wr.write_image(np.s_[:, :], np.clip(img, 0, 65535).astype(np.uint16))
        wr.write_transcripts(transcripts, row_group_size=row_group_size)
    return str(path)


@pytest.fixture(scope="module")
def ray_module():
    """One Ray instance per test module (starting Ray costs seconds)."""
    import ray

    ray.init(
        address="local",  # a new instance even where another Ray is registered on the machine
        num_cpus=2,
        include_dashboard=False,
        ignore_reinit_error=True,
        logging_level="ERROR",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """A real S3 protocol server (moto, server mode) on 127.0.0.1 with bucket ``stseg-test``.

    Yields (s3fs filesystem, storage options) and sets no environment variable itself.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    opts = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    import boto3
    import s3fs

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="stseg-test")
    fs = s3fs.S3FileSystem(**opts)
    yield fs, opts
    server.stop()


SMALL_TILES = ["tiling.tile_size_um=24", "tiling.chunk_px=16", "runtime.progress=false"]


def small_tiles_config(*items):
    """Config that cuts a small chip into ~50 tiles, so borders are everywhere."""
    from stseg_dist.config import load_config, parse_set

    return load_config(overrides=parse_set([*SMALL_TILES, *items]), use_env=False)


@pytest.fixture(scope="session")
def medium_chip(tmp_path_factory):
    return make_blob_chip(
        tmp_path_factory.mktemp("medium") / "chip",
        shape=(300, 360),
        n_nuclei=70,
        n_transcripts=20_000,
    )


@pytest.fixture(scope="session")
def clean_run(medium_chip, tmp_path_factory):
    """The reference: the medium chip run in-process, with no fault."""
    from stseg_dist.driver import run_pipeline

    out = tmp_path_factory.mktemp("clean") / "out"
    run_pipeline(medium_chip, str(out), small_tiles_config(), local=True)
    return out


def assert_same_outputs(a, b):
    """Label arrays, cell table and per-transcript assignments of two runs are identical."""
    import pandas as pd
    import zarr

    for name in ("cells", "nuclei"):
        np.testing.assert_array_equal(
            zarr.open_array(str(a / "labels.zarr" / name))[:],
            zarr.open_array(str(b / "labels.zarr" / name))[:],
        )
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "cells.parquet"), pd.read_parquet(b / "cells.parquet")
    )
    ta = pd.read_parquet(a / "transcripts.parquet").sort_values("input_row").reset_index(drop=True)
    tb = pd.read_parquet(b / "transcripts.parquet").sort_values("input_row").reset_index(drop=True)
    assert tb.input_row.is_unique
    pd.testing.assert_frame_equal(ta, tb)


def one_tile_vs_many(chip, tmp_path, items, tile_um, chunk_px=32):
    """Run ``chip`` as one in-process tile and as many Ray tiles (every method's tile-invariance
    check); returns both summaries and each run's (cells, nuclei) label arrays.
    """
    import zarr

    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline

    runs = []
    for name, tiling, local in (
        ("one", ["tiling.tile_size_um=1000"], True),
        ("many", [f"tiling.tile_size_um={tile_um}", f"tiling.chunk_px={chunk_px}"], False),
    ):
        config = load_config(overrides=parse_set([*items, *tiling]), use_env=False)
        summary = run_pipeline(chip, str(tmp_path / name), config, local=local)
        labels = tuple(
            zarr.open_array(str(tmp_path / name / "labels.zarr" / k))[:]
            for k in ("cells", "nuclei")
        )
        runs.append((summary, labels))
    (one, labels_one), (many, labels_many) = runs
    return one, many, labels_one, labels_many
