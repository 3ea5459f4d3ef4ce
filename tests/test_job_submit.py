"""`ray job submit` against a real local Ray head: the stseg CLI as entry point, RAY_ADDRESS,
exit codes.
"""

import json

import pytest

from stseg_dist.synth import synth_chip
from tests.ray_head import ray_env, start_head, stop_head, submit, wait_for_job_api

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def head():
    """A head of this module's own: stopping it stops no other Ray (see tests/ray_head.py)."""
    env = ray_env()
    url, proc = start_head(env)
    try:
        wait_for_job_api(url, env)
        yield url
    finally:
        stop_head(proc)


def _submit(url, *entry):
    return submit(url, ray_env(RAY_ADDRESS=url), *entry)


def test_job_runs_stseg_and_writes_outputs(head, tmp_path):
    chip = tmp_path / "chip"
    synth_chip(str(chip), 80, 70, seed=4, block_um=80)
    out = tmp_path / "out"
    r = _submit(
        head,
        "python",
        "-m",
        "stseg_dist",
        "run",
        "--chip",
        str(chip),
        "--out",
        str(out),
        "--set",
        "tiling.tile_size_um=40",
        "--no-progress",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["counts"]["n_cells"] > 0


def test_failed_job_exits_non_zero(head, tmp_path):
    r = _submit(
        head,
        "python",
        "-m",
        "stseg_dist",
        "run",
        "--chip",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode != 0
    assert "failed" in (r.stdout + r.stderr).lower()
    assert "missing" in r.stdout + r.stderr
