"""The CLI end to end: run.json records absolute locations (exports work from any directory),
a non-empty folder that is not a stseg run is refused unless --overwrite, and a run rejected
before it starts leaves no folder behind.
"""

from __future__ import annotations

import json
import os

import pytest

from stseg_dist.cli import main
from tests.conftest import make_blob_chip

FAST = ["--local", "--no-spatialdata", "--no-progress", "--set", "tiling.tile_size_um=40"]


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    return make_blob_chip(
        tmp_path_factory.mktemp("chip") / "chip", shape=(80, 80), n_nuclei=8, n_transcripts=800
    )


def test_run_json_is_absolute_and_export_works_from_another_directory(
    chip, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(chip, work / "mychip")
    monkeypatch.chdir(work)
    assert main(["run", "--chip", "mychip", "--out", "out", *FAST]) == 0
    run = json.loads((work / "out" / "run.json").read_text())
    assert run["chip"] == str(work / "mychip") and run["out"] == str(work / "out")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["export", "--to", "xenium-explorer", "../work/out", "--out", "xe"]) == 0
    assert (elsewhere / "xe" / "experiment.xenium").exists()

    # a run.json of an older version, with the locations as given (relative), still exports
    run.update(chip="mychip", out="out")
    (work / "out" / "run.json").write_text(json.dumps(run))
    assert main(["export", "--to", "xenium-explorer", str(work / "out"), "--out", "xe2"]) == 0


@pytest.mark.parametrize(
    "bad",
    [
        ["--chip", "no-such-chip"],
        ["--chip", "CHIP", "--set", "tiling.no_such_key=1"],
        ["--chip", "CHIP", "--set", "cells.method=no_such_method"],
    ],
    ids=["missing-chip", "bad-config-key", "bad-method"],
)
def test_a_rejected_run_leaves_nothing(bad, chip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [chip if a == "CHIP" else a for a in bad]
    assert main(["run", *args, "--out", "out", *FAST]) == 2
    assert "stseg: error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # not even an empty out/


def test_a_rejected_run_keeps_a_folder_it_found(chip, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["run", "--chip", str(tmp_path / "missing"), "--out", str(out), *FAST]) == 2
    assert out.is_dir() and list(out.iterdir()) == []  # as it was


def test_a_foreign_folder_is_refused_unless_overwrite(chip, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", "--chip", chip, "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "not empty and holds no stseg run (notes.txt)" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written

    assert main(["run", "--chip", chip, "--out", str(out), "--overwrite", *FAST]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"notes.txt", "run.json", "cells.parquet", "labels.zarr"} <= names
    assert (out / "notes.txt").read_text() == "mine"

    # a stseg run folder is re-run without --overwrite (resume/replace)
    assert main(["run", "--chip", chip, "--out", str(out), *FAST]) == 0


def test_a_folder_of_run_outputs_without_run_json_is_a_run(tmp_path):
    """Removing run.json to have a run redone (as a batch re-run does) keeps the folder a run's;
    one foreign file among the outputs makes it foreign again.
    """
    from stseg_dist.errors import OutputError
    from stseg_dist.outfolder import check_output_folder

    out = tmp_path / "out"
    (out / "labels.zarr").mkdir(parents=True)
    (out / "cells.parquet").write_bytes(b"")
    check_output_folder(str(out))  # accepted
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        check_output_folder(str(out))
