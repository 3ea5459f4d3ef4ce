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
    # curated: a short table with a meaning per row, the full dump behind a fold
    short, fold = text.split("<details>", 1)
    assert "<th>pixel F1</th>" in short and "cell foreground against the reference mask" in short
    assert "pixel.f1" not in short and "pixel.f1" in fold
    assert "(&#x27;" not in text  # gene pairs read A/B, not as Python tuples (escaped)
    assert "stain not shown" not in text


def test_report_without_the_chip_says_the_stain_is_missing(run_dir, tmp_path):
    import json
    import shutil

    _, out = run_dir
    moved = tmp_path / "out"
    shutil.copytree(out, moved)
    run = json.loads((moved / "run.json").read_text())
    run["chip"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(run))
    text = open(write_report(str(moved)), encoding="utf-8").read()
    assert "stain not shown" in text and text.count("data:image/png;base64,") == 4


def test_hooked_sections_render_only_with_their_keys(run_dir, monkeypatch):
    """Other modules add figures (nucleus metrics, coverage-contamination frontier) through
    register_section; a section whose keys are absent is left out, and one that fails is shown
    as failed without sinking the report.
    """
    from stseg_dist import report

    chip, out = run_dir
    monkeypatch.setattr(report, "SECTIONS", {})
    seen = {}

    def frontier(ctx):
        seen["n"] = ctx.value("counts.n_cells")
        return "<p>frontier figure</p>"

    def broken(ctx):
        raise ValueError("no data")

    report.register_section(
        "frontier", report.Section("Coverage", frontier, ("counts.n_cells",), 40)
    )
    report.register_section("absent", report.Section("Absent", frontier, ("nuclei.no_such",), 30))
    report.register_section("broken", report.Section("Broken", broken, (), 45))
    text = open(write_report(out), encoding="utf-8").read()
    assert "<h2>Coverage</h2><p>frontier figure</p>" in text and seen["n"] > 0
    assert "<h2>Absent</h2>" not in text
    assert "section broken failed: ValueError: no data" in text
    assert text.index("Zoomed crop") < text.index("<h2>Coverage</h2>") < text.index("distributions")


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
def test_report_renders_in_chromium_with_the_stain_under_outlines(run_dir, tmp_path):
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
    # the overview holds the stain (many grey levels) under cell and nucleus outlines
    stats = {k: int(v) for k, v in re.findall(r'data-overview-([a-z-]+)="(\d+)"', res.stdout)}
    assert stats["grey-levels"] > 100, stats  # a flat fill or black has a handful
    assert stats["cell-outline-px"] > 500 and stats["nucleus-outline-px"] > 200, stats
    assert "Uncaught" not in res.stderr  # console errors are logged to stderr


def test_overview_reads_the_stores_pyramid_level(tmp_path, monkeypatch):
    """With a SpatialData store, the overview is drawn from its pyramid level of at most
    ``OVERVIEW_PX`` per side (labels by nearest, the stain by mean), not a strided read of the
    full-resolution arrays.
    """
    pytest.importorskip("spatialdata")
    import numpy as np
    import zarr

    from stseg_dist import report
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline
    from stseg_dist.export import spatialdata as sd
    from stseg_dist.synth import synth_chip

    if not sd.scale_factors((4096, 4096)):
        pytest.skip("this spatialdata writes no pyramid")
    monkeypatch.setattr(sd, "PYRAMID_TOP_PX", 64)  # a small chip with levels s0..s2
    chip, out = str(tmp_path / "chip"), str(tmp_path / "out")
    synth_chip(chip, 100, 100, seed=3)
    config = load_config(overrides=parse_set(["tiling.tile_size_um=64"]), use_env=False)
    run_pipeline(chip, out, config, local=True, spatialdata=True)
    monkeypatch.setattr(report, "OVERVIEW_PX", 60)
    cells = zarr.open_array(f"{out}/labels.zarr/cells", mode="r")
    h, w = cells.shape
    stride, lab, nuc, stain = report._store_level(
        report.ReportContext(out, {}, {}, None, None, 0.5, (0.0, 0.0), None), h, w
    )
    store = f"{out}/spatialdata.zarr"
    assert stride == 4 and lab.shape == (-(-h // 4), -(-w // 4))
    np.testing.assert_array_equal(lab, zarr.open_array(f"{store}/labels/cell_labels/s2")[:])
    np.testing.assert_array_equal(nuc, zarr.open_array(f"{store}/labels/nucleus_labels/s2")[:])
    assert stain is not None and stain.shape == lab.shape
    assert set(np.unique(lab)) <= set(np.unique(cells[:]))

    def no_full_read(*a, **k):
        raise AssertionError("the overview read the full-resolution stain")

    monkeypatch.setattr(report, "_read_stain", no_full_read)
    monkeypatch.setattr(report, "_crop", lambda ctx: "")  # the crop reads full resolution
    text = open(write_report(out), encoding="utf-8").read()
    assert text.count("data:image/png;base64,") == 3 and "stain not shown" not in text
