"""A batch whose driver is killed mid-run and submitted again finishes with the outputs of an
uninterrupted run: what a RayJob's retry (backoffLimit) relies on, on a real local Ray head with
`ray job submit`, and Ray's job API refusing a submission without the token the manifests set.
"""

import json
import secrets
import signal
import time

import psutil
import pytest
import yaml

from stseg_dist.batch import run_batch
from stseg_dist.synth import synth_chip
from tests.conftest import assert_same_outputs
from tests.ray_head import REPO, ray_env, start_head, stop_head, submit, wait_for_job_api

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def head():
    env = ray_env()  # RAY_AUTH_MODE=disabled: a private test head
    url, proc = start_head(env)
    try:
        wait_for_job_api(url, env)
        yield url, env
    finally:
        stop_head(proc)


def _manifest(root, out: str) -> str:
    doc = {
        "out": f"{out}/batch",
        "max_concurrent_slides": 1,  # one slide at a time: the kill lands inside one slide
        "slides": [
            {
                "name": f"s{i}",
                "input": f"chips/c{i}",
                "output": f"{out}/s{i}",
                "platform": "xenium",
                "overrides": {
                    "runtime.progress": False,
                    "tiling.tile_size_um": 24,
                    "tiling.chunk_px": 16,
                },
            }
            for i in range(3)
        ],
    }
    p = root / f"{out}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def _tiles(slide_out) -> int:
    return sum(1 for _ in slide_out.glob("_work/*/*/tile-*"))


def _kill_driver(manifest: str) -> list[int]:
    """SIGKILL the job's driver (the `stseg batch MANIFEST` process), as losing the head would."""
    killed = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if manifest in cmd and "batch" in cmd and any("python" in c for c in cmd[:1]):
            p.send_signal(signal.SIGKILL)
            killed.append(p.pid)
    return killed


def test_killed_batch_resubmitted_matches_an_uninterrupted_run(head, tmp_path):
    url, env = head
    for i in range(3):
        synth_chip(str(tmp_path / "chips" / f"c{i}"), 100, 90, seed=40 + i, block_um=100)
    killed_url = _manifest(tmp_path, "killed")
    entry = ["python", "-m", "stseg_dist", "batch", "--failed-slides-exit-code", "0", killed_url]
    r = submit(url, env, *entry, wait=False, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # kill the driver while a slide is part-way: some of its tiles checkpointed, the slide not done
    status_file, victim, deadline = (
        tmp_path / "killed" / "batch" / "status.json",
        None,
        time.time() + 400,
    )
    while victim is None and time.time() < deadline:
        try:
            slides = json.loads(status_file.read_text())["slides"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            slides = []
        for s in slides:
            out = tmp_path / "killed" / s["slide"]
            if s["status"] == "running" and not (out / "run.json").exists() and _tiles(out) > 0:
                victim = s["slide"]
                assert _kill_driver(killed_url), "no driver process to kill"
                break
        if all(s["status"] == "complete" for s in slides) and len(slides) == 3:
            pytest.fail("the batch finished before its driver could be killed")
        time.sleep(0.05)
    assert victim, "no slide was ever seen part-way"
    tiles_at_kill = _tiles(tmp_path / "killed" / victim)

    # the killed job fails; the same entry point submitted again resumes and completes
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(url)
    for _ in range(120):
        states = {j.status for j in client.list_jobs() if killed_url in j.entrypoint}
        if states and states <= {JobStatus.FAILED, JobStatus.STOPPED}:
            break
        time.sleep(1)
    assert states == {JobStatus.FAILED}, states
    r = submit(url, env, *entry)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = {s["slide"]: s["status"] for s in json.loads(status_file.read_text())["slides"]}
    assert status[victim] == "complete" and "failed" not in status.values(), status
    run = json.loads((tmp_path / "killed" / victim / "run.json").read_text())
    assert 0 < sum(run["resumed_tiles"].values()) <= tiles_at_kill, "resumed from its checkpoints"

    # an uninterrupted run of the same slides (in this process) gives the very same outputs
    ref = run_batch(_manifest(tmp_path, "ref"), local=True)
    assert ref["status"] == "complete"
    for i in range(3):
        assert_same_outputs(tmp_path / "ref" / f"s{i}", tmp_path / "killed" / f"s{i}")


def test_job_api_needs_the_token_the_manifests_set(tmp_path):
    """A head started with the environment every Ray container gets from the manifests refuses a
    submission without the token, or with a wrong one, and runs the one that has it.
    """
    from tests.deploy.kustomize import render

    job = next(
        d
        for d in render(REPO / "deploy" / "kuberay" / "overlays" / "batch-prod")
        if d["kind"] == "RayJob"
    )
    head_env = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "env"
    ]
    mode = next(e["value"] for e in head_env if e["name"] == "RAY_AUTH_MODE")
    token = secrets.token_hex(32)  # what docs/cluster.md puts in Secret stseg-ray-token
    env = {**ray_env(), "RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN": token}
    url, proc = start_head(env)
    try:
        wait_for_job_api(url, env)
        entry = ("python", "-c", "print('ran')")
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        for who, client_env in (
            ("no token", no_token),
            ("auth off", {**no_token, "RAY_AUTH_MODE": "disabled"}),
            ("wrong token", {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}),
        ):
            r = submit(url, client_env, *entry, ship=False, timeout=120)
            assert r.returncode != 0 and "ran" not in r.stdout, who
            assert any(
                w in r.stdout + r.stderr for w in ("401", "403", "nauthorized", "orbidden")
            ), (
                who,
                r.stdout[-1500:] + r.stderr[-1500:],
            )
        r = submit(url, env, *entry, ship=False, timeout=300)
        assert r.returncode == 0 and "ran" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        stop_head(proc)
