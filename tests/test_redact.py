"""No credential in any file or log a run writes, however it was passed (config file, --set,
environment): storage options, credential-like keys, URL passwords and signed query strings.
"""

import json
import os
import subprocess
import sys

import pytest

from stseg_dist import redact
from stseg_dist.config import load_config, parse_set
from stseg_dist.errors import ConfigError
from tests.conftest import REPO, SMALL_TILES, make_blob_chip

FILE_KEY, SET_SECRET, ENV_TOKEN, AWS_SECRET = (
    "AKIAFILE0123456",
    "set-secret-9f8e7d",
    "env-token-5a4b3c",
    "aws-env-77c1d0e",
)


def test_names_records_and_text():
    assert redact.is_sensitive("aws_secret_access_key") and redact.is_sensitive("AWS_SESSION_TOKEN")
    assert redact.is_sensitive("X-Amz-Signature") and redact.is_sensitive("apiKey")
    assert not redact.is_sensitive("run_key") and not redact.is_sensitive("tile_size_um")
    rec = {
        "run_key": "abc",
        "config": {
            "storage_options": {"endpoint_url": "http://minio:9000", "anon": False},
            "password": "hunter22",
        },
        "chip": "https://alice:pw1234@host/chip?X-Amz-Signature=deadbeef&part=1",
    }
    out = redact.redact(rec)
    assert out["run_key"] == "abc" and out["config"]["password"] == redact.MASK
    assert out["config"]["storage_options"] == {"endpoint_url": redact.MASK, "anon": False}
    assert out["chip"] == "https://***@host/chip?X-Amz-Signature=***&part=1"
    redact.register(
        {"storage_options": {"secret": "s3cr3t-value"}}, environ={"MY_API_TOKEN": "tok-123456"}
    )
    assert redact.scrub("denied: s3cr3t-value / tok-123456") == "denied: *** / ***"


def test_config_errors_do_not_echo_credentials(tmp_path):
    with pytest.raises(ConfigError, match=r"storage_options' must be a mapping, got \*\*\*") as e:
        load_config(
            overrides=parse_set([f"nuclei.cellpose.storage_options={SET_SECRET}"]), use_env=False
        )
    assert SET_SECRET not in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"nuclei:\n  cellpose:\n    storage_options: {{secret: {SET_SECRET}\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(str(bad), use_env=False)
    assert SET_SECRET not in str(e.value) and "line" in str(e.value)


def _run(chip, out, cfg_file, env, *extra):
    cmd = [
        sys.executable,
        "-m",
        "stseg_dist",
        "-v",
        "run",
        "--chip",
        chip,
        "--out",
        str(out),
        "--local",
        "--no-progress",
        "--config",
        str(cfg_file),
        "--set",
        f"nuclei.cellpose.storage_options.secret={SET_SECRET}",
        *[a for s in SMALL_TILES for a in ("--set", s)],
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _leaks(text: str) -> list[str]:
    return [s for s in (FILE_KEY, SET_SECRET, ENV_TOKEN, AWS_SECRET) if s in text]


def test_no_secret_in_outputs_or_logs(tmp_path):
    chip = make_blob_chip(tmp_path / "chip", shape=(160, 200), n_nuclei=20, n_transcripts=4_000)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"nuclei:\n  cellpose:\n    storage_options:\n      key: {FILE_KEY}\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "STSEG_CELLS__MEMBRANE__CELLPOSE__STORAGE_OPTIONS__TOKEN": ENV_TOKEN,
    }
    # a method that logs its credentials and fails tile 0 with them in the error (incomplete run:
    # run.json, the work manifest and the error) ...
    out = tmp_path / "out"
    leaky = _run(
        chip,
        out,
        cfg,
        {**env, "STSEG_POISON": "1"},
        "--set",
        "cells.method=tests.plugin_methods:LeakyExpansion",
    )
    assert leaky.returncode == 3, leaky.stderr[-2000:]
    [failed] = json.loads((out / "run.json").read_text())["failed"]
    assert "access denied for {'key': '***', 'secret': '***', 'token': '***'}" in failed["error"]
    assert "'AWS_SECRET_ACCESS_KEY': '***'" in failed["error"]
    # ... then the same run completed (outputs, report)
    done = _run(chip, out, cfg, env, "--set", "cells.method=tests.plugin_methods:LeakyExpansion")
    assert done.returncode == 0, done.stderr[-2000:]
    logs = leaky.stdout + leaky.stderr + done.stdout + done.stderr
    assert "reads with" in logs
    assert _leaks(logs) == []
    written = [p for p in tmp_path.rglob("*") if p.is_file() and out in p.parents]
    assert {"run.json", "report.html", "cells.parquet"} <= {p.name for p in written}
    assert [p for p in written if _leaks(p.read_bytes().decode("latin-1"))] == []
    run = json.loads((out / "run.json").read_text())
    so = run["config"]["nuclei"]["cellpose"]["storage_options"]
    assert so == {"key": redact.MASK, "secret": redact.MASK}
    assert run["config"]["cells"]["membrane"]["cellpose"]["storage_options"] == {
        "token": redact.MASK
    }
