"""`stseg export` on a missing or incomplete run names what is wrong and writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from stseg_dist.cli import main

FORMATS = ["spatialdata", "xenium-explorer"]
TARGET = {"spatialdata": "spatialdata.zarr", "xenium-explorer": "xenium_explorer"}


@pytest.fixture
def run_copy(small_run, tmp_path):
    chip, run = small_run
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("spatialdata.zarr", "xenium_explorer"))
    return chip, dst


def _export(capsys, fmt, run, *extra):
    rc = main(["export", "--to", fmt, str(run), *extra])
    return rc, capsys.readouterr().err


def _nothing_written(run):
    left = [p.name for p in run.iterdir() if p.name.startswith(".") or p.name in TARGET.values()]
    assert not left, left


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_run(fmt, tmp_path, capsys):
    rc, err = _export(capsys, fmt, tmp_path / "nope")
    assert rc == 2 and f"run folder not found: {tmp_path / 'nope'}" in err
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "name", ["cell_boundaries.parquet", "cells.h5ad", "labels.zarr/nuclei", "run.json"]
)
def test_missing_file_is_named(fmt, name, run_copy, capsys):
    chip, run = run_copy
    target = run / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    rc, err = _export(capsys, fmt, run, "--chip", str(chip))
    assert rc == 2 and f"{target}: missing" in err, err
    _nothing_written(run)


@pytest.mark.parametrize("fmt", FORMATS)
def test_incomplete_run(fmt, run_copy, capsys):
    chip, run = run_copy
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "incomplete"}))
    rc, err = _export(capsys, fmt, run, "--chip", str(chip))
    assert rc == 2 and "run status is 'incomplete'" in err and str(run / "run.json") in err
    _nothing_written(run)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_chip(fmt, run_copy, capsys, tmp_path):
    _, run = run_copy
    rc, err = _export(capsys, fmt, run, "--chip", str(tmp_path / "gone"))
    assert rc == 2 and "chip" in err and str(tmp_path / "gone") in err and "--chip" in err
    _nothing_written(run)


def test_wrong_chip(run_copy, capsys, tmp_path):
    from tests.conftest import make_blob_chip

    _, run = run_copy
    other = make_blob_chip(tmp_path / "other", shape=(64, 64), n_nuclei=3, n_transcripts=100)
    rc, err = _export(capsys, "xenium-explorer", run, "--chip", other)
    assert rc == 2 and "not this run's chip" in err
    _nothing_written(run)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_write_leaves_nothing(fmt, run_copy):
    """An error in the middle of writing (here: a broken transcripts file) removes the staging
    folder.
    """
    from stseg_dist.export import export_run

    chip, run = run_copy
    (run / "transcripts.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception, match="(?i)parquet"):
        export_run(str(run), fmt, chip=str(chip))
    _nothing_written(run)
