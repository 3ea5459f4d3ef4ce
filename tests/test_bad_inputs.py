"""Bad input: a clear error naming the file and the problem, raised before any output is touched."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from stseg_dist.errors import InputError, OutputError
from stseg_dist.io.chip import open_chip
from tests.conftest import make_blob_chip


def _cfg():
    return load_config(
        overrides=parse_set(
            ["runtime.progress=false", "tiling.tile_size_um=60", "tiling.chunk_px=32"]
        ),
        use_env=False,
    )


def _tx(x, y, gene=None):
    gene = gene if gene is not None else ["A"] * len(x)
    return pa.table({"x": np.asarray(x, float), "y": np.asarray(y, float), "gene": gene})


@pytest.fixture
def good_output(tmp_path):
    """A finished run whose files must survive every rejected re-run into the same folder."""
    chip = make_blob_chip(tmp_path / "good", n_transcripts=2000)
    out = tmp_path / "out"
    run_pipeline(chip, str(out), _cfg(), local=True)
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return out, snapshot


def _unchanged(out, snapshot):
    now = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert now == snapshot


def _edit_chip_json(path, **changes):
    meta = json.loads((path / "chip.json").read_text())
    meta.update(changes)
    (path / "chip.json").write_text(json.dumps(meta))


CASES = {
    "nan coordinate": (
        lambda p: make_blob_chip(p, transcripts=_tx([1.0, np.nan], [1.0, 2.0])),
        "not finite",
    ),
    "inf coordinate": (
        lambda p: make_blob_chip(p, transcripts=_tx([1.0, 2.0], [np.inf, 2.0])),
        "not finite",
    ),
    "outside extent": (
        lambda p: make_blob_chip(p, transcripts=_tx([1.0, 500.0], [1.0, 2.0])),
        "outside the image extent",
    ),
    "huge coordinate": (
        lambda p: make_blob_chip(p, transcripts=_tx([1.0, 1e300], [1.0, 2.0])),
        "outside the image extent",
    ),
    "empty chip": (lambda p: make_blob_chip(p, transcripts=_tx([], [])), "no transcripts"),
    "image smaller than transcripts": (
        lambda p: make_blob_chip(p, shape=(40, 40), transcripts=_tx([1.0, 30.0], [1.0, 2.0])),
        "outside the image extent",
    ),
    "negative coordinate": (
        lambda p: make_blob_chip(p, transcripts=_tx([1.0, -5.0], [1.0, 2.0])),
        "outside the image extent",
    ),
    "null gene": (
        lambda p: make_blob_chip(p, transcripts=_tx([1.0, 2.0], [1.0, 2.0], ["A", None])),
        "no 'gene'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_transcripts_rejected_before_outputs_change(case, tmp_path, good_output):
    make, message = CASES[case]
    chip = make(tmp_path / "bad")
    out, snapshot = good_output
    with pytest.raises(InputError, match=message) as err:
        run_pipeline(chip, str(out), _cfg(), local=True)
    assert "transcripts.parquet" in str(err.value)
    _unchanged(out, snapshot)


def test_missing_chip_json(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    os.remove(os.path.join(chip, "chip.json"))
    with pytest.raises(InputError, match=r"chip\.json: missing"):
        open_chip(chip)
    with pytest.raises(InputError, match="chip not found"):
        open_chip(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    "value, message",
    [(0, "positive"), (-0.5, "positive"), ("big", "positive"), (float("nan"), "positive")],
)
def test_bad_pixel_size(tmp_path, value, message):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    meta = json.loads((tmp_path / "c" / "chip.json").read_text())
    meta["pixel_size_um"] = value
    (tmp_path / "c" / "chip.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=f"pixel_size_um.*{message}"):
        open_chip(chip)


def test_bad_origin_and_json(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    _edit_chip_json(tmp_path / "c", origin_um=[0])
    with pytest.raises(InputError, match="origin_um"):
        open_chip(chip)
    (tmp_path / "c" / "chip.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        open_chip(chip)


def test_missing_columns_and_wrong_types(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    pq.write_table(pa.table({"x": [1.0], "gene": ["A"]}), tmp_path / "c" / "transcripts.parquet")
    with pytest.raises(InputError, match=r"missing required column\(s\) \['y'\]"):
        _ = open_chip(chip).transcripts
    pq.write_table(
        pa.table({"x": ["a"], "y": [1.0], "gene": ["A"]}), tmp_path / "c" / "transcripts.parquet"
    )
    with pytest.raises(InputError, match="'x' must be numeric"):
        _ = open_chip(chip).transcripts
    pq.write_table(
        pa.table({"x": [1.0], "y": [1.0], "gene": [7]}), tmp_path / "c" / "transcripts.parquet"
    )
    with pytest.raises(InputError, match="'gene' must be strings"):
        _ = open_chip(chip).transcripts
    (tmp_path / "c" / "transcripts.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(InputError, match="not a readable parquet file"):
        _ = open_chip(chip).transcripts


def test_missing_image_and_transcripts(tmp_path):
    import shutil

    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    shutil.rmtree(tmp_path / "c" / "image.zarr")
    with pytest.raises(InputError, match="image missing"):
        open_chip(chip)
    chip = make_blob_chip(tmp_path / "d", n_transcripts=100)
    os.remove(tmp_path / "d" / "transcripts.parquet")
    with pytest.raises(InputError, match="transcripts missing"):
        open_chip(chip)


def test_output_that_is_a_file(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    target = tmp_path / "out"
    target.write_text("precious")
    with pytest.raises(OutputError, match="is a file"):
        run_pipeline(chip, str(target), _cfg(), local=True)
    assert target.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputError, match="not writable"):
        run_pipeline(chip, str(ro / "out"), _cfg(), local=True)


def test_unwritable_output_on_a_read_only_filesystem(tmp_path):
    """As root, permissions do not stop writes; /proc does."""
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    with pytest.raises(OutputError, match="not writable"):
        run_pipeline(chip, "/proc/stseg-out", _cfg(), local=True)


def test_vendor_backend_without_nuclei(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    cfg = _cfg()
    cfg.nuclei.backend = "vendor"
    with pytest.raises(InputError, match="needs nuclei.zarr"):
        run_pipeline(chip, str(tmp_path / "o"), cfg, local=True)


def test_unknown_method_and_backend(tmp_path):
    from stseg_dist.errors import ConfigError

    chip = make_blob_chip(tmp_path / "c", n_transcripts=100)
    for key in ("cells.method=nope", "nuclei.backend=nope"):
        cfg = load_config(overrides=parse_set([key]), use_env=False)
        with pytest.raises(ConfigError, match="nope"):
            run_pipeline(chip, str(tmp_path / "o"), cfg, local=True)


def test_odd_gene_names_and_duplicate_ids_round_trip(tmp_path):
    """Documented recovery: gene names pass through untouched; duplicate transcript_ids are kept as
    given and ``input_row`` (always unique) identifies each transcript.
    """
    import anndata as ad
    import pandas as pd

    genes = ["Gene A/ß", 'q"uote,comma', "", "タ", "NegControlProbe_1"]
    n = 500
    rng = np.random.default_rng(0)
    t = pa.table(
        {
            "x": rng.uniform(0, 159, n),
            "y": rng.uniform(0, 119, n),
            "gene": [genes[i % len(genes)] for i in range(n)],
            "transcript_id": np.repeat(np.arange(n // 2), 2),
        }
    )
    chip = make_blob_chip(tmp_path / "c", transcripts=t)
    out = tmp_path / "out"
    run_pipeline(chip, str(out), _cfg(), local=True)
    tx = pd.read_parquet(out / "transcripts.parquet")
    assert sorted(tx.input_row) == list(range(n))
    back = tx.sort_values("input_row")
    assert back.gene.tolist() == t.column("gene").to_pylist()
    assert back.transcript_id.tolist() == t.column("transcript_id").to_pylist()
    adata = ad.read_h5ad(out / "cells.h5ad")
    assert sorted(adata.var_names) == sorted(genes)


def test_corrupt_image_chunk_names_the_window(tmp_path):
    chip = make_blob_chip(tmp_path / "c", n_transcripts=200)
    chunk = next(
        p
        for p in (tmp_path / "c" / "image.zarr").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match=r"image\.zarr: cannot read window"):
        run_pipeline(chip, str(tmp_path / "out"), _cfg(), local=True)


def test_missing_image_chunk_is_reported_not_silent(tmp_path):
    """Documented recovery: a missing zarr chunk reads as fill (zarr semantics) and run.json
    warns.
    """
    chip = make_blob_chip(tmp_path / "c", n_transcripts=300)
    chunks = sorted(
        p
        for p in (tmp_path / "c" / "image.zarr").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunks[0].unlink()
    summary = run_pipeline(chip, str(tmp_path / "out"), _cfg(), local=True)
    assert summary["status"] == "complete"
    assert any("1 of 20 image chunks are not stored" in w for w in summary["warnings"])


def test_empty_tiles_are_fine(tmp_path):
    """Transcripts in one corner only: most tiles have none, and no nuclei either."""
    rng = np.random.default_rng(0)
    t = _tx(rng.uniform(0, 20, 300), rng.uniform(0, 20, 300))
    chip = make_blob_chip(tmp_path / "c", transcripts=t, n_nuclei=2)
    summary = run_pipeline(chip, str(tmp_path / "out"), _cfg(), local=True)
    assert summary["status"] == "complete" and summary["counts"]["n_transcripts"] == 300
