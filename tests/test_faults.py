"""Faults: retried tasks, killed actors, lost nodes, poison tiles, a killed driver. The outputs must
equal a clean run's, with every transcript counted exactly once.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from stseg_dist.driver import run_pipeline
from stseg_dist.errors import RunIncompleteError
from tests.conftest import REPO, SMALL_TILES, assert_same_outputs, small_tiles_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_cfg = small_tiles_config


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def ray_faults(fault_dir):
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={
            "env_vars": {"STSEG_FAULT_DIR": str(fault_dir), "STSEG_FAULT_TILES": "3,17,40"}
        },
    )
    yield ray
    ray.shutdown()


def test_task_failing_once_is_retried(medium_chip, clean_run, tmp_path, ray_faults, fault_dir):
    summary = run_pipeline(
        medium_chip, str(tmp_path / "out"), _cfg("cells.method=tests.plugin_methods:FlakyExpansion")
    )
    assert summary["status"] == "complete"
    assert {"flaky-3", "flaky-17", "flaky-40"} <= {
        p.name for p in fault_dir.iterdir()
    }  # the faults fired
    assert_same_outputs(clean_run, tmp_path / "out")


def test_poison_tile_recorded_and_rest_completes(medium_chip, clean_run, tmp_path, ray_faults):
    out = tmp_path / "out"
    with pytest.raises(RunIncompleteError, match="3 tile"):
        run_pipeline(
            medium_chip, str(out), _cfg("cells.method=tests.plugin_methods:PoisonExpansion")
        )
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
        run_pipeline(
            medium_chip,
            str(tmp_path / "ff"),
            _cfg("cells.method=tests.plugin_methods:PoisonExpansion", "runtime.fail_fast=true"),
        )


def test_killed_actor_is_restarted(medium_chip, clean_run, tmp_path, ray_faults):
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
    summary = run_pipeline(
        medium_chip,
        str(tmp_path / "out"),
        _cfg("cells.method=tests.plugin_methods:SlowActorExpansion"),
    )
    th.join()
    assert killed, "no actor was found to kill"
    assert summary["status"] == "complete"
    assert_same_outputs(clean_run, tmp_path / "out")


def test_driver_killed_with_sigkill_then_resumed(medium_chip, clean_run, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "stseg_dist",
        "run",
        "--chip",
        medium_chip,
        "--out",
        str(out),
        "--no-progress",
        "--local",
        *[a for kv in SMALL_TILES for a in ("--set", kv)],
        "--set",
        "cells.method=tests.plugin_methods:SlowActorExpansion",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
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
    assert_same_outputs(clean_run, out)
