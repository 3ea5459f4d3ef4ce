"""One run at a time per output folder: a second run refuses naming the lock, a dead run's lock is
taken over, on a local disk and on S3 (moto server).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from stseg_dist.errors import OutputError
from stseg_dist.runlock import LOCK_NAME, RunLock, hold
from tests.conftest import REPO, SMALL_TILES, make_blob_chip


def _plant(out, **rec):
    out.mkdir(parents=True, exist_ok=True)
    base = {
        "token": "someone-else",
        "pid": 1,
        "host": "other-host",
        "started": "earlier",
        "heartbeat_unix": time.time(),
    }
    (out / LOCK_NAME).write_text(json.dumps({**base, **rec}))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_holder_refused_until_release(tmp_path):
    out = tmp_path / "out"
    with hold(str(out)) as first:
        assert json.loads((out / LOCK_NAME).read_text())["token"] == first.token
        with hold(str(out)) as nested:  # the same thread nests (the CLI holds it around the driver)
            assert nested is first
        with pytest.raises(
            OutputError,
            match=rf"in use by another stseg run \(pid {os.getpid()} on host "
            rf"{socket.gethostname()}.*lock: .*{LOCK_NAME}",
        ):
            RunLock(str(out)).acquire()
    assert not (out / LOCK_NAME).exists()
    RunLock(str(out)).acquire().release()


def test_live_lock_refused_stale_locks_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    _plant(out)  # another host, fresh heartbeat: alive as far as we can tell
    with pytest.raises(
        OutputError, match="pid 1 on host other-host, started earlier, last heartbeat"
    ):
        RunLock(str(out)).acquire()
    _plant(out, heartbeat_unix=time.time() - 600)  # another host, silent for 10 minutes
    lock = RunLock(str(out)).acquire()
    assert "heartbeat is 600 s old" in caplog.text
    lock.release()
    _plant(out, host=socket.gethostname(), pid=_dead_pid())  # this host, holder process gone
    lock = RunLock(str(out)).acquire()
    assert "on this host, is gone" in caplog.text
    lock.release()
    (out / LOCK_NAME).write_text("{half a rec")  # unreadable and old: taken over too
    os.utime(out / LOCK_NAME, (time.time() - 600, time.time() - 600))
    RunLock(str(out)).acquire().release()


def test_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
    out = tmp_path / "out"
    lock = RunLock(str(out), heartbeat_s=0.1, stale_s=1.0).acquire()
    first = json.loads((out / LOCK_NAME).read_text())["heartbeat_unix"]
    time.sleep(0.5)
    assert json.loads((out / LOCK_NAME).read_text())["heartbeat_unix"] > first
    _plant(out, token="thief")
    time.sleep(0.5)
    assert lock.lost and "taken over" in lock.lost
    lock.release()
    assert json.loads((out / LOCK_NAME).read_text())["token"] == "thief"  # not ours to remove


def test_lock_on_s3_is_exclusive(s3):
    fs, opts = s3
    out = "s3://stseg-test/locked-run"
    with hold(out, opts):
        assert fs.exists(f"stseg-test/locked-run/{LOCK_NAME}")
        with pytest.raises(OutputError, match=f"locked-run/{LOCK_NAME}"):
            RunLock(out, opts).acquire()
    assert not fs.exists(f"stseg-test/locked-run/{LOCK_NAME}")


@pytest.mark.slow
def test_concurrent_runs_and_a_killed_run(tmp_path):
    """Two ``stseg run`` into one OUT: the second refuses; the first is then SIGKILLed, and the
    next run takes its lock over and completes.
    """
    chip = make_blob_chip(tmp_path / "chip", shape=(160, 200), n_nuclei=20, n_transcripts=4_000)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "stseg_dist",
        "run",
        "--chip",
        chip,
        "--out",
        str(out),
        "--local",
        "--no-progress",
        "--set",
        "cells.method=tests.plugin_methods:SleepyExpansion",
        *[a for s in SMALL_TILES for a in ("--set", s)],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        cmd, cwd=REPO, env={**env, "STSEG_SLEEP_S": "1"}, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not (out / LOCK_NAME).exists():
            assert first.poll() is None and time.time() < deadline, "first run never took the lock"
            time.sleep(0.1)
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by another stseg run (pid {first.pid} on host" in second.stderr
        assert f"{out}/{LOCK_NAME}" in second.stderr
        assert first.poll() is None  # untouched by the refused run
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_NAME).exists() and not (out / "run.json").exists()
    third = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert (
        "taking over the lock" in third.stderr
        and f"pid {first.pid} on this host, is gone" in third.stderr
    )
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not (out / LOCK_NAME).exists()
