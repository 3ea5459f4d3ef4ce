"""`ray job submit` against a real local Ray head: the stseg CLI as entry point, RAY_ADDRESS,
exit codes.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stseg_dist.synth import synth_chip

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
EXCLUDES = [
    ".venv",
    ".git",
    "tests",
    "benchmarks",
    "demo-out",
    "*.egg-info",
    ".pytest_cache",
    "notebooks",
]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    port, dash = _free_port(), _free_port()
    env = _env()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        # wait for the job API (the dashboard comes up after the GCS)
        for _ in range(120):
            r = subprocess.run(
                [RAY, "job", "list", "--address", url], env=env, capture_output=True, timeout=120
            )
            if r.returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail(f"Ray job API at {url} never answered: {r.stderr.decode()[-2000:]}")
        yield url
    finally:
        subprocess.run(
            [RAY, "stop", "--force"],
            env=_env(RAY_ADDRESS=f"127.0.0.1:{port}"),
            capture_output=True,
            timeout=300,
        )


def _submit(url, *entry, timeout=540):
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        url,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
        "--",
        *entry,
    ]
    return subprocess.run(
        cmd, env=_env(RAY_ADDRESS=url), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


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
