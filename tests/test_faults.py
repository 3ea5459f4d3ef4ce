"""Faults: retried tasks, killed actors, lost nodes, poison tiles, a killed driver. The outputs must
equal a clean run's, with every transcript counted exactly once."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import zarr

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from stseg_dist.errors import RunIncompleteError
from tests.conftest import REPO, make_blob_chip

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TILES = ["tiling.tile_size_um=24", "tiling.chunk_px=16", "runtime.progress=false"]


def _cfg(*items):
    return load_config(overrides=parse_set([*TILES, *items]), use_env=False)


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def ray_faults(fault_dir):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"STSEG_FAULT_DIR": str(fault_dir), "STSEG_FAULT_TILES": "3,17,40"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    return make_blob_chip(tmp_path_factory.mktemp("c") / "chip", shape=(300, 360), n_nuclei=70, n_transcripts=20_000)


@pytest.fixture(scope="module")
def clean(chip, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    run_pipeline(chip, str(out), _cfg(), local=True)
    return out


def assert_same_outputs(a, b):
    for name in ("cells", "nuclei"):
        np.testing.assert_array_equal(zarr.open_array(str(a / "labels.zarr" / name))[:],
                                      zarr.open_array(str(b / "labels.zarr" / name))[:])
    pd.testing.assert_frame_equal(pd.read_parquet(a / "cells.parquet"), pd.read_parquet(b / "cells.parquet"))
    ta = pd.read_parquet(a / "transcripts.parquet").sort_values("transcript_id").reset_index(drop=True)
    tb = pd.read_parquet(b / "transcripts.parquet").sort_values("transcript_id").reset_index(drop=True)
    assert tb.transcript_id.is_unique
    pd.testing.assert_frame_equal(ta, tb)


def test_task_failing_once_is_retried(chip, clean, tmp_path, ray_faults, fault_dir):
    summary = run_pipeline(chip, str(tmp_path / "out"), _cfg("cells.method=tests.plugin_methods:FlakyExpansion"))
    assert summary["status"] == "complete"
    assert {"flaky-3", "flaky-17", "flaky-40"} <= {p.name for p in fault_dir.iterdir()}  # the faults fired
    assert_same_outputs(clean, tmp_path / "out")


def test_poison_tile_recorded_and_rest_completes(chip, clean, tmp_path, ray_faults):
    out = tmp_path / "out"
    with pytest.raises(RunIncompleteError, match="3 tile"):
        run_pipeline(chip, str(out), _cfg("cells.method=tests.plugin_methods:PoisonExpansion"))
    import json

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "incomplete"
    assert sorted(f["tile"] for f in run["failed"]) == [3, 17, 40]
    assert all("poison tile" in f["error"] for f in run["failed"])
    assert run["tiles"][3]["status"] == "failed" and "poison" in run["tiles"][3]["error"]
    done = [t for t in run["tiles"] if t["status"] == "done"]
    assert len(done) == run["n_tiles"] - 3
    # fail-fast stops at the first poison tile
    with pytest.raises(RuntimeError, match="poison tile"):
        run_pipeline(chip, str(tmp_path / "ff"), _cfg("cells.method=tests.plugin_methods:PoisonExpansion",
                                                      "runtime.fail_fast=true"))


def test_killed_actor_is_restarted(chip, clean, tmp_path, ray_faults):
    ray = ray_faults
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for a in ray.util.list_named_actors(all_namespaces=False):
                if a.startswith("stseg-cells-"):
                    time.sleep(1.0)
                    ray.kill(ray.get_actor(a), no_restart=False)
                    killed.append(a)
                    break
            time.sleep(0.1)

    th = threading.Thread(target=killer)
    th.start()
    summary = run_pipeline(chip, str(tmp_path / "out"), _cfg("cells.method=tests.plugin_methods:SlowActorExpansion"))
    th.join()
    assert killed, "no actor was found to kill"
    assert summary["status"] == "complete"
    assert_same_outputs(clean, tmp_path / "out")


def test_driver_killed_with_sigkill_then_resumed(chip, clean, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "stseg_dist", "run", "--chip", chip, "--out", str(out), "--no-progress",
           "--local", *[a for kv in TILES for a in ("--set", kv)],
           "--set", "cells.method=tests.plugin_methods:SlowActorExpansion"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    done = []
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "_work").glob("*/cells-*/tile-*.npz"))
        if len(done) >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    import json

    run = json.loads((out / "run.json").read_text())
    assert run["resumed_tiles"]["nuclei"] == run["n_tiles"]
    assert run["resumed_tiles"]["cells"] >= 20
    assert_same_outputs(clean, out)
