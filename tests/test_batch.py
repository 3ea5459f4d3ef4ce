"""stseg batch: three generated slides concurrently on one Ray, one broken slide, re-run resumes."""

import csv
import json

import pytest
import yaml

from stseg_dist.batch import parse_manifest, run_batch
from stseg_dist.config import PipelineConfig
from stseg_dist.errors import ConfigError
from stseg_dist.synth import synth_chip


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    for i in range(3):
        synth_chip(str(root / f"chip{i}"), 90, 80, seed=10 + i, block_um=90)
    return root


def _manifest(root, extra=None, broken=True):
    doc = {
        "out": str(root / "batch-out"),
        "max_concurrent_slides": 4,
        "slides": [
            {
                "name": f"s{i}",
                "input": f"chip{i}",
                "output": f"out/s{i}",
                "platform": "xenium",
                "overrides": {"runtime": {"progress": False}, "tiling.tile_size_um": 40 + 5 * i},
            }
            for i in range(3)
        ],
    }
    if broken:
        doc["slides"].append(
            {"name": "broken", "input": "no-such-chip", "output": "out/broken", "platform": "cosmx"}
        )
    if extra:
        doc.update(extra)
    p = root / "manifest.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


@pytest.mark.ray
@pytest.mark.slow
def test_batch_concurrent_failure_isolated_and_rerun_skips(slides, ray_module):
    url = _manifest(slides)
    summ = run_batch(url)
    by = {r["slide"]: r for r in summ["slides"]}
    assert summ["status"] == "incomplete"
    assert by["broken"]["status"] == "failed" and "no-such-chip" in by["broken"]["error"]
    for i in range(3):
        r = by[f"s{i}"]
        assert r["status"] == "complete", r
        assert r["cells"] > 0 and r["transcripts"] > 0
        run = json.loads((slides / "out" / f"s{i}" / "run.json").read_text())
        assert run["status"] == "complete"
        assert run["config"]["tiling"]["tile_size_um"] == 40 + 5 * i  # per-slide override applied
    status = json.loads((slides / "batch-out" / "status.json").read_text())
    assert {s["slide"]: s["status"] for s in status["slides"]} == {
        "s0": "complete",
        "s1": "complete",
        "s2": "complete",
        "broken": "failed",
    }
    with open(slides / "batch-out" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide"] for r in rows] == ["s0", "s1", "s2", "broken"]
    assert set(rows[0]) >= {"status", "cells", "transcripts", "wall_seconds"}
    assert int(rows[1]["cells"]) == by["s1"]["cells"]

    # re-run: remove one finished slide's outputs and fix the broken one; only those two run
    (slides / "out" / "s1" / "run.json").unlink()
    synth_chip(str(slides / "no-such-chip"), 60, 60, seed=99, block_um=60)
    summ2 = run_batch(url)
    by2 = {r["slide"]: r["status"] for r in summ2["slides"]}
    assert by2 == {"s0": "skipped", "s1": "complete", "s2": "skipped", "broken": "complete"}
    assert summ2["status"] == "complete"


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"slides": []}, "'slides' must be a non-empty list"),
        ({"slides": [{"input": "a"}]}, "'output' is required"),
        ({"slides": [{"input": "a", "output": "b", "colour": 1}]}, "unknown key(s) ['colour']"),
        ({"slides": [{"input": "a", "output": "b", "platform": "visium"}]}, "platform 'visium'"),
        (
            {
                "slides": [
                    {"name": "x", "input": "a", "output": "b"},
                    {"name": "x", "input": "c", "output": "d"},
                ]
            },
            "duplicate slide name 'x'",
        ),
        (
            {"slides": [{"input": "a", "output": "b", "overrides": {"tiling.no_such": 1}}]},
            "overrides",
        ),
        (
            {"slides": [{"input": "a", "output": "b", "overrides": [1]}]},
            "'overrides' must be a mapping",
        ),
        (
            {"slides": [{"input": "a", "output": "b"}], "max_concurrent_slides": 0},
            "max_concurrent_slides",
        ),
        (
            {"slides": [{"input": "a", "output": "b"}], "bogus": 1},
            "unknown manifest key(s) ['bogus']",
        ),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_manifest_rejected(tmp_path, doc, fragment):
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as ei:
        parse_manifest(str(p))
    assert fragment in str(ei.value) and str(p) in str(ei.value)


def test_bad_manifest_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_manifest(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("slides: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_manifest(str(bad))
    c = tmp_path / "m.csv"
    c.write_text("name,input\nx,a\n")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['output'\]"):
        parse_manifest(str(c))


def test_csv_manifest_resolves_relative_paths(tmp_path):
    c = tmp_path / "m.csv"
    c.write_text(
        "name,input,output,platform\na,chips/a,out/a,merscope\nb,s3://bk/b,s3://bk/out/b,\n"
    )
    m = parse_manifest(str(c))
    assert [s.input for s in m.slides] == [str(tmp_path / "chips/a"), "s3://bk/b"]
    assert m.slides[0].platform == "merscope" and m.slides[1].platform == "generic"
    assert m.out == str(tmp_path)


def test_vendor_bundle_slide_is_converted_with_its_platform(tmp_path):
    """A slide's input may be a vendor bundle: converted by its platform's reader (with the slide's
    reader options) into the slide's OUTPUT/_work/input_chip, then segmented.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    (tmp_path / "bundle").mkdir()
    pd.DataFrame(
        {
            "x": rng.uniform(0, 60, 800),
            "y": rng.uniform(0, 40, 800),
            "gene": rng.choice(["A", "B", "C"], 800),
        }
    ).to_csv(tmp_path / "bundle" / "transcripts.csv", index=False)
    slide = {
        "name": "b",
        "input": "bundle",
        "output": "out/b",
        "platform": "generic",
        "reader_options": {"pixel_size_um": 0.5},
        "overrides": {"runtime.progress": False},
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"out": "bo", "slides": [slide]}))
    summary = run_batch(str(tmp_path / "m.yaml"), local=True)
    assert summary["status"] == "complete", summary
    run = json.loads((tmp_path / "out" / "b" / "run.json").read_text())
    assert run["chip"].endswith("_work/input_chip") and run["counts"]["n_transcripts"] == 800
    # the transcript-density chip got the reader's hints (no shared config in the manifest)
    assert run["config"]["nuclei"]["classical"] != PipelineConfig().to_dict()["nuclei"]["classical"]
    bad = {**slide, "reader_options": {"pixel_size": 0.5}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"out": "bo", "slides": [bad]}))
    with pytest.raises(
        ConfigError, match=r"slides\[0\]: reader_options: unknown reader option\(s\) 'pixel_size'"
    ):
        parse_manifest(str(tmp_path / "bad.yaml"))


# ---- exit codes: "some slides failed, each recorded" is not "the batch crashed" ----------------


@pytest.fixture(scope="module")
def one_chip(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit")
    synth_chip(str(root / "chip"), 60, 60, seed=3, block_um=60)
    return root


def _two_slides(root, out="batch-out"):
    doc = {
        "out": out,
        "slides": [
            {"name": "good", "input": "chip", "output": "out/good", "platform": "xenium"},
            {"name": "bad", "input": "no-such-chip", "output": "out/bad", "platform": "cosmx"},
        ],
    }
    p = root / f"{out.replace('/', '-')}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_exit_codes_tell_failed_slides_from_a_crash(one_chip, capsys):
    from stseg_dist.cli import EXIT_INCOMPLETE, main

    url = _two_slides(one_chip)
    assert main(["batch", "--local", url]) == EXIT_INCOMPLETE == 3
    status = json.loads((one_chip / "batch-out" / "status.json").read_text())
    rec = {s["slide"]: s for s in status["slides"]}
    assert rec["good"]["status"] == "complete" and rec["good"]["failure"] is None
    assert rec["bad"]["status"] == "failed" and rec["bad"]["failure"] == "slide"
    assert "no-such-chip" in rec["bad"]["error"]
    assert "1 complete, 0 skipped, 1 failed of 2 slides" in capsys.readouterr().out
    # as the RayJob runs it: recorded slide failures exit 0, so KubeRay does not retry them
    assert main(["batch", "--local", "--failed-slides-exit-code", "0", url]) == 0
    with open(one_chip / "batch-out" / "summary.csv") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    assert rows["good"]["status"] == "skipped" and rows["bad"]["failure"] == "slide"
    # a bad manifest: 2, nothing ran; --check says so without running anything
    bad = one_chip / "typo.yaml"
    bad.write_text(yaml.safe_dump({"slides": [{"input": "chip", "output": "o", "colour": 1}]}))
    assert main(["batch", "--local", str(bad)]) == 2
    assert main(["batch", "--check", str(bad)]) == 2
    assert main(["batch", "--check", url]) == 0 and "2 slide(s)" in capsys.readouterr().out
    # the batch itself crashed (its status file cannot be written): 1, which a RayJob retries
    (one_chip / "blocked").write_text("a file where the batch's out folder should be")
    crash = _two_slides(one_chip, out="blocked/batch-out")
    assert main(["batch", "--local", "--failed-slides-exit-code", "0", crash]) == 1


def test_a_slide_lost_to_the_cluster_exits_as_a_crash(one_chip, monkeypatch):
    """A slide that failed because Ray lost a node is retry-worthy: the batch exits 1."""
    import ray.exceptions

    from stseg_dist import driver
    from stseg_dist.cli import main

    real = driver.run_pipeline

    def lose_a_node(*args, **kwargs):
        if kwargs["out_url"].endswith("bad"):
            raise ray.exceptions.NodeDiedError("node 10.0.0.7 died (spot reclaim)")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "run_pipeline", lose_a_node)
    url = _two_slides(one_chip, out="lost")
    assert main(["batch", "--local", "--failed-slides-exit-code", "0", url]) == 1
    status = json.loads((one_chip / "lost" / "status.json").read_text())
    assert {s["slide"]: s["failure"] for s in status["slides"]} == {"good": None, "bad": "cluster"}


def test_failure_kind():
    import ray.exceptions

    from stseg_dist.batch import failure_kind

    assert failure_kind(ray.exceptions.WorkerCrashedError()) == "cluster"
    assert failure_kind(ray.exceptions.NodeDiedError("gone")) == "cluster"
    assert failure_kind(ray.exceptions.ActorDiedError()) == "cluster"
    try:
        try:
            raise ray.exceptions.NodeDiedError("gone")
        except ray.exceptions.NodeDiedError as exc:
            raise RuntimeError("tile 3 failed") from exc
    except RuntimeError as wrapped:
        assert failure_kind(wrapped) == "cluster"
    assert failure_kind(ConfigError("bad key")) == "slide"
    assert failure_kind(FileNotFoundError("no-such-chip")) == "slide"
    assert failure_kind(ray.exceptions.OutOfMemoryError("tile too big")) == "slide"


def test_batch_honours_stseg_environment(tmp_path, monkeypatch):
    """STSEG_* in the driver's environment (a RayJob's runtimeEnvYAML) reach every slide's config,
    under the slide's own overrides; a bad one is refused before any slide starts.
    """
    from stseg_dist.batch import _slide_config

    p = tmp_path / "m.yaml"
    slides = [
        {"name": "a", "input": "a", "output": "oa"},
        {"name": "b", "input": "b", "output": "ob", "overrides": {"runtime.max_retries": 1}},
    ]
    p.write_text(yaml.safe_dump({"slides": slides}))
    monkeypatch.setenv("STSEG_RUNTIME__MAX_RETRIES", "7")
    m = parse_manifest(str(p))
    assert [_slide_config(m, s)({}).runtime.max_retries for s in m.slides] == [7, 1]
    monkeypatch.setenv("STSEG_RUNTIME__MAX_RETRIES", "-1")
    with pytest.raises(ConfigError, match="max_retries"):
        parse_manifest(str(p))
