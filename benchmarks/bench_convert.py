"""Generate a Xenium-layout bundle of N transcripts (parquet written in chunks) and convert it.

Prints conversion time and peak RSS, to show the readers stream
(the table is never whole in memory).
Usage: .venv/bin/python benchmarks/bench_convert.py --n 40000000 --dir /tmp/bench_convert
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def generate(d: Path, n: int, chunk: int = 2_000_000, side_um: float = 5000.0) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "experiment.xenium").write_text('{"pixel_size": 0.2125}')
    genes = np.array([f"Gene{i:03d}" for i in range(300)] + ["NegControlProbe_1", "BLANK_0001"])
    rng = np.random.default_rng(0)
    w = None
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        t = pa.table(
            {
                "transcript_id": np.arange(s, s + m, dtype=np.uint64),
                "cell_id": pa.array(["UNASSIGNED"] * m),
                "overlaps_nucleus": np.zeros(m, np.uint8),
                "feature_name": pa.array(genes[rng.integers(0, len(genes), m)]),
                "x_location": rng.uniform(0, side_um, m).astype(np.float32),
                "y_location": rng.uniform(0, side_um, m).astype(np.float32),
                "z_location": rng.uniform(0, 20, m).astype(np.float32),
                "qv": rng.uniform(5, 40, m).astype(np.float32),
            }
        )
        w = w or pq.ParquetWriter(d / "transcripts.parquet", t.schema)
        w.write_table(t, row_group_size=500_000)
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40_000_000)
    ap.add_argument("--side-um", type=float, default=5000.0)
    ap.add_argument("--dir", default="/tmp/bench_convert")
    ap.add_argument(
        "--batch-rows", type=int, default=1 << 20, help="reader batch size (the memory bound)"
    )
    a = ap.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    generate(root / "bundle", a.n, side_um=a.side_um)
    t1 = time.perf_counter()
    rss_gen = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Convert in a child process so its peak RSS is the converter's alone, not the generator's.
    # The child reports its own VmHWM: ru_maxrss would fold in the parent's RSS at fork/exec.
    code = (
        "import sys, re; from stseg_dist.io.bundles import convert_bundle; "
        "r = convert_bundle(sys.argv[1], sys.argv[2], options={'batch_rows': int(sys.argv[3])}); "
        "print({k: r[k] for k in ('n_transcripts', 'dropped', 'shape_yx')}); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(root / "bundle"), str(root / "chip"), str(a.batch_rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    t2 = time.perf_counter()
    report, hwm_kib = res.stdout.strip().splitlines()[-2:]
    print(report)
    size = (root / "bundle" / "transcripts.parquet").stat().st_size / 2**20
    print(
        f"n={a.n} input={size:.0f} MiB generate={t1 - t0:.1f}s (peak RSS {rss_gen:.0f} MiB) "
        f"convert={t2 - t1:.1f}s convert_peak_rss={int(hwm_kib) / 1024:.0f} MiB "
        f"batch_rows={a.batch_rows}"
    )


if __name__ == "__main__":
    main()
