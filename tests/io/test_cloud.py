"""A vendor bundle on S3 (a real S3 protocol server, moto) read by ``stseg run --input s3://...``.

Credentials come from the environment, as on a cluster; nothing printed or written may hold them.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from stseg_dist.cli import main
from stseg_dist.errors import InputError
from stseg_dist.io.bundles import convert_bundle
from tests.io.test_reader_layouts import _xenium_with_masks

SECRET = "SeCrEt-must-never-be-logged-7731"


@pytest.fixture
def s3_env(s3, monkeypatch):
    fs, opts = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "stseg-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", opts["client_kwargs"]["endpoint_url"])
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    return fs


def test_xenium_bundle_on_s3_runs_end_to_end(tmp_path, s3_env, capsys):
    fs = s3_env
    b = tmp_path / "b"
    cells, nuclei, df = _xenium_with_masks(b)
    img = np.random.default_rng(0).integers(0, 500, (60, 80), dtype=np.uint16)
    tifffile.imwrite(b / "morphology_focus.ome.tif", img, ome=True)
    fs.put(str(b), "stseg-test/bundles/x1", recursive=True)
    out = "s3://stseg-test/runs/x1"
    rc = main(
        [
            "run",
            "--input",
            "s3://stseg-test/bundles/x1",
            "--out",
            out,
            "--local",
            "--no-progress",
            "--set",
            "nuclei.backend=vendor",
        ]
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    run = json.loads(fs.cat("stseg-test/runs/x1/run.json"))
    assert run["status"] == "complete" and run["chip_meta"]["platform"] == "xenium"
    assert run["counts"]["n_transcripts"] == len(df) and run["counts"]["n_cells"] == 6
    with fs.open("stseg-test/runs/x1/transcripts.parquet", "rb") as fh:
        t = pq.read_table(fh).to_pandas()
    assert sorted(t.transcript_id) == sorted(df.transcript_id)
    # The morphology image stays on S3, referenced lazily; the masks were read from the remote zip.
    chip_json = json.loads(fs.cat("stseg-test/runs/x1/_work/input_chip/chip.json"))
    assert chip_json["image"]["path"] == "s3://stseg-test/bundles/x1/morphology_focus.ome.tif"
    everything = printed.out + printed.err + json.dumps(run) + json.dumps(chip_json)
    everything += fs.cat("stseg-test/runs/x1/report.html").decode(errors="replace")
    assert SECRET not in everything and "stseg-key" not in everything


def test_missing_remote_bundle_error_names_the_url_not_the_credentials(s3_env, tmp_path):
    with pytest.raises(InputError) as e:
        convert_bundle("s3://stseg-test/bundles/none", str(tmp_path / "c"))
    assert "s3://stseg-test/bundles/none" in str(e.value) and SECRET not in str(e.value)
