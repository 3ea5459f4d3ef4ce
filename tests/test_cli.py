"""The CLI end to end, as users run it (a subprocess, embedded Ray)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, make_blob_chip

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}


def stseg(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "stseg_dist", *args],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_run_on_embedded_ray(tmp_path):
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=5000)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "tiling:\n  tile_size_um: 60\n  chunk_px: 32\ncells:\n  expansion:\n    distance_um: 4\n"
    )
    res = stseg(
        "run",
        "--chip",
        chip,
        "--out",
        str(tmp_path / "out"),
        "--config",
        str(cfg),
        "--set",
        "runtime.progress=false",
    )
    assert res.returncode == 0, res.stderr
    assert "complete:" in res.stdout and "transcripts/s" in res.stdout
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["cells"]["expansion"]["distance_um"] == 4.0
    assert run["n_tiles"] == 6 and run["counts"]["n_transcripts"] == 5000


def test_bad_input_exit_code_and_message(tmp_path):
    res = stseg(
        "run", "--chip", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--local"
    )
    assert res.returncode == 2
    assert "stseg: error: chip not found" in res.stderr and "Traceback" not in res.stderr
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=100)
    res = stseg(
        "run", "--chip", chip, "--out", str(tmp_path / "o"), "--local", "--set", "tiling.bogus=1"
    )
    assert res.returncode == 2 and "unknown config key(s) 'bogus' in 'tiling'" in res.stderr


def test_incomplete_run_exit_code(tmp_path):
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=1000)
    env_extra = {"STSEG_FAULT_DIR": str(tmp_path / "f"), "STSEG_FAULT_TILES": "0"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "stseg_dist",
            "run",
            "--chip",
            chip,
            "--out",
            str(tmp_path / "o"),
            "--local",
            "--set",
            "cells.method=tests.plugin_methods:PoisonExpansion",
            "--set",
            "tiling.tile_size_um=60",
            "--set",
            "tiling.chunk_px=32",
        ],
        env={**ENV, **env_extra},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 3, res.stderr
    assert "incomplete" in res.stderr and "1 tile(s) failed" in res.stderr


def test_eval_without_a_reference(tmp_path):
    """A user with no reference still gets MECR, nucleus-cytoplasm r and the assigned share."""
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=3000)
    assert (
        stseg(
            "run",
            "--chip",
            chip,
            "--out",
            str(tmp_path / "out"),
            "--local",
            "--no-progress",
            "--no-spatialdata",
        ).returncode
        == 0
    )
    res = stseg("eval", "--pred", str(tmp_path / "out"), "--json", str(tmp_path / "m.json"))
    assert res.returncode == 0, res.stderr
    assert "reference_free.mecr" in res.stdout and "reference_free.assigned_share" in res.stdout
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0 < m["reference_free"]["assigned_share"] <= 1 and "instance" not in m
    res = stseg("eval", "--pred", str(tmp_path / "out"), "--markers", str(tmp_path / "none.csv"))
    assert res.returncode == 2 and "--markers: file not found" in res.stderr


def test_version(capsys):
    from stseg_dist import __version__
    from stseg_dist.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"stseg {__version__}"
