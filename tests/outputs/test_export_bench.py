"""`stseg bench -- --exports` runs both exports on a run and reports their figures
(not asserted).
"""

from __future__ import annotations

import json


def test_exports_bench_reports_each_format(small_run, tmp_path, capsys):
    from stseg_dist.bench import main

    chip, run = small_run
    out = tmp_path / "figures.json"
    assert (
        main(["--", "--exports", "--run", str(run), "--chip", str(chip), "--json", str(out)]) == 0
    )
    rows = json.loads(out.read_text())
    assert [r["format"] for r in rows] == ["spatialdata", "xenium-explorer"]
    for r in rows:
        assert r["seconds"] > 0 and r["peak_rss_mib"] > 0 and r["written_mib"] > 0
    assert "peak RSS" in capsys.readouterr().out
    assert not (run / "bench-spatialdata").exists() and not (run / "bench-xenium-explorer").exists()
