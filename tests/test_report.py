"""report.html: written for a real run, self-contained, and rendered by headless chromium."""

import re
import shutil
import subprocess

import pytest

from stseg_dist.errors import InputError
from stseg_dist.report import write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline
    from stseg_dist.synth import synth_chip

    base = tmp_path_factory.mktemp("report")
    chip = str(base / "chip")
    synth_chip(chip, 100, 100, seed=3)
    out = str(base / "out")
    run_pipeline(
        chip,
        out,
        load_config(overrides=parse_set(["tiling.tile_size_um=64"]), use_env=False),
        local=True,
    )
    return chip, out


def test_report_contents(run_dir):
    chip, out = run_dir
    path = write_report(out, ref=chip)
    text = open(path, encoding="utf-8").read()
    assert text.count("data:image/png;base64,") == 4
    assert "Metrics against" in text and "pixel.f1" in text and "transcripts.ari" in text
    assert "dropped transcripts" in text and "Per-tile timing" in text
    assert not re.search(r"(src|href)=\"(https?:|//)", text)  # self-contained


def test_report_without_reference_and_bad_ref(run_dir, tmp_path):
    chip, out = run_dir
    text = open(write_report(out), encoding="utf-8").read()
    assert "Metrics against" not in text
    text = open(write_report(out, ref=str(tmp_path)), encoding="utf-8").read()
    assert "InputError" in text  # shown, not raised: the run itself succeeded
    with pytest.raises(InputError, match="run.json"):
        write_report(str(tmp_path))


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)"
)
def test_report_renders_in_chromium(run_dir, tmp_path):
    chip, out = run_dir
    path = write_report(out, ref=chip)
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"file://{path}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'data-images-ok="yes"' in res.stdout, res.stdout[:500]
    assert 'data-n-images="4"' in res.stdout
    assert "data-js-error=" not in res.stdout
    assert "Uncaught" not in res.stderr  # console errors are logged to stderr
