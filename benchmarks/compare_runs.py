"""Behaviour check: run every cell method with one code tree, then compare two such sets of runs.

A refactor must not change results. ``run`` segments a small generated chip (and the real
Stereo-seq crop, whose bin sizes come from the platform) with every method that needs no
downloaded weights, using the code at ``--code`` (a checkout: its ``stseg_dist`` is imported);
``compare`` then checks two run folders output by output:

- ``labels.zarr`` arrays byte-identical;
- ``cells.parquet``, ``transcripts.parquet`` (sorted by ``input_row``) and both boundary files
  equal as tables;
- ``cells.h5ad``'s X and obs equal.

Usage (contended CPU: every run is small; ``--only`` picks cases by name)::

    python benchmarks/compare_runs.py chip --code /tmp/base --out /tmp/cmp/chip  # + chip-stereoseq
    python benchmarks/compare_runs.py run --code /tmp/base --chip /tmp/cmp/chip --out /tmp/cmp/base
    python benchmarks/compare_runs.py run --code . --chip /tmp/cmp/chip --out /tmp/cmp/new
    python benchmarks/compare_runs.py compare /tmp/cmp/base /tmp/cmp/new
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

STEREOSEQ = "/work/shared/data/stereoseq_gem_mousebrain"
SMALL = [
    "tiling.tile_size_um=48",
    "tiling.chunk_px=32",
    "runtime.progress=false",
]
UCS = ["cells.method=ucs", "cells.ucs.n_train_patches=48", "cells.ucs.epochs=3"]
GSN = [
    "cells.method=genesegnet",
    "cells.genesegnet.n_train_patches=16",
    "cells.genesegnet.epochs=2",
    "cells.genesegnet.max_rounds=2",
    "cells.genesegnet.patch_px=24",
    "cells.genesegnet.width=8",
]
SSL = ["cells.method=sslcst", "cells.sslcst.n_train_spots=1500", "cells.sslcst.epochs=3"]

#: name -> (input: "chip" or the Stereo-seq crop, config file or None, --set items)
CASES: dict[str, tuple[str, str | None, list[str]]] = {
    "expansion": ("chip", None, []),
    "expansion-vendor": ("chip", None, ["nuclei.backend=vendor"]),
    "ucs": ("chip", None, UCS),
    "ucs-paper": ("chip", None, [*UCS, "cells.ucs.variant=paper"]),
    "genesegnet": ("chip", None, GSN),
    "genesegnet-paper": ("chip", None, [*GSN, "cells.genesegnet.variant=paper"]),
    "sslcst": ("chip", None, [*SSL, "nuclei.backend=vendor"]),
    "sslcst-paper": (
        "chip",
        None,
        [*SSL, "nuclei.backend=vendor", "cells.sslcst.variant=paper", "cells.sslcst.blocks=2"],
    ),
    "membrane": ("chip", None, ["cells.method=membrane"]),
    "membrane-paper": (
        "chip",
        None,
        ["cells.method=membrane", "cells.membrane.variant=paper", "cells.membrane.block_um=24"],
    ),
    "stereoseq-expansion": ("stereoseq", "configs/stereoseq.yaml", []),
    "stereoseq-ucs": ("stereoseq", "configs/stereoseq.yaml", UCS),
    "stereoseq-sslcst": ("stereoseq", "configs/stereoseq.yaml", SSL),
    # the crop converted once by the ``chip`` command's code: an older chip.json, whose facts
    # (bin size, spot capture) the newer code must derive as before
    "stereoseq-chip-ucs": ("stereoseq-chip", "configs/stereoseq.yaml", UCS),
}


def _stseg(code: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m stseg_dist ARGS`` with the package of the checkout ``code``: run from there,
    since ``-m`` puts the working folder first on the import path (before PYTHONPATH).
    """
    code = str(Path(code).resolve())
    env = dict(os.environ, PYTHONPATH=code)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "stseg_dist", *args]
    return subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True, check=False)


def _checked(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])


def make_chip(args) -> None:
    """The generated chip at ``--out``, and the Stereo-seq crop converted beside it
    (``<out>-stereoseq``), both written by ``--code``.
    """
    out = str(Path(args.out).resolve())
    cmd = ["synth", "--out", out, "--width-um", "120", "--height-um", "96", "--seed", "4"]
    _checked(_stseg(args.code, [*cmd, "--membrane", "--vendor-nuclei", "--overwrite"]))
    cmd = ["convert", "--input", STEREOSEQ, "--out", f"{out}-stereoseq", "--platform", "stereoseq"]
    _checked(_stseg(args.code, [*cmd, "--overwrite"]))


def run_cases(args) -> None:
    code = Path(args.code).resolve()
    for name, (source, config, items) in CASES.items():
        if args.only and name not in args.only:
            continue
        out = Path(args.out).resolve() / name
        chip = str(Path(args.chip).resolve())
        cmd = ["run", "--out", str(out), "--local", "--no-progress", "--no-spatialdata"]
        if source == "chip":
            cmd += ["--chip", chip]
        elif source == "stereoseq-chip":
            cmd += ["--chip", f"{chip}-stereoseq"]
        else:
            cmd += ["--input", STEREOSEQ, "--platform", "stereoseq"]
        if config:
            cmd += ["--config", str(code / config)]
        for item in [*SMALL, *items]:
            cmd += ["--set", item]
        t0 = time.perf_counter()
        proc = _stseg(str(code), cmd)
        status = "ok" if proc.returncode == 0 else f"FAILED rc={proc.returncode}"
        print(f"{name:22s} {status} {time.perf_counter() - t0:6.1f} s (contended)", flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], flush=True)


def _frames_equal(a, b) -> str | None:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(a, b)
    except AssertionError as exc:
        return str(exc).splitlines()[0] + " ... " + " ".join(str(exc).split())[-200:]
    return None


def compare_one(a: Path, b: Path) -> list[str]:
    """The differences between two runs of one case (empty: the same)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import zarr

    diffs = []
    for name in ("cells", "nuclei"):
        x = zarr.open_array(str(a / "labels.zarr" / name))[:]
        y = zarr.open_array(str(b / "labels.zarr" / name))[:]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            diffs.append(f"labels.zarr/{name}: {int((x != y).sum())} pixels differ")
    for name in ("cells.parquet", "cell_boundaries.parquet", "nucleus_boundaries.parquet"):
        if (a / name).exists() != (b / name).exists():
            diffs.append(f"{name}: present in only one run")
        elif (a / name).exists():
            d = _frames_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
            if d:
                diffs.append(f"{name}: {d}")
    ta = pd.read_parquet(a / "transcripts.parquet").sort_values("input_row").reset_index(drop=True)
    tb = pd.read_parquet(b / "transcripts.parquet").sort_values("input_row").reset_index(drop=True)
    d = _frames_equal(ta, tb)
    if d:
        diffs.append(f"transcripts.parquet: {d}")
    ha, hb = ad.read_h5ad(a / "cells.h5ad"), ad.read_h5ad(b / "cells.h5ad")
    xa, xb = ha.X.toarray(), hb.X.toarray()
    if xa.shape != xb.shape or xa.dtype != xb.dtype or not np.array_equal(xa, xb):
        diffs.append("cells.h5ad X differs")
    d = _frames_equal(ha.obs, hb.obs)
    if d:
        diffs.append(f"cells.h5ad obs: {d}")
    if list(ha.var_names) != list(hb.var_names):
        diffs.append("cells.h5ad var_names differ")
    return diffs


def compare(args) -> int:
    a, b = Path(args.a), Path(args.b)
    bad = 0
    print(f"{'case':22s} {'cells':>6s} {'tx':>7s}  result")
    for name in CASES:
        if not (a / name / "run.json").exists() or not (b / name / "run.json").exists():
            print(
                f"{name:22s} {'':>6s} {'':>7s}  missing in "
                f"{'A' if not (a / name).exists() else 'B'}"
            )
            continue
        import pandas as pd

        n_cells = len(pd.read_parquet(a / name / "cells.parquet"))
        n_tx = pd.read_parquet(a / name / "transcripts.parquet", columns=["cell_id"]).shape[0]
        diffs = compare_one(a / name, b / name)
        bad += bool(diffs)
        print(f"{name:22s} {n_cells:6d} {n_tx:7d}  {'identical' if not diffs else 'DIFFERENT'}")
        for d in diffs:
            print(f"    {d}")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chip", help="write the small generated chip")
    c.add_argument("--code", default=".")
    c.add_argument("--out", required=True)
    r = sub.add_parser("run", help="run every case with one code tree")
    r.add_argument("--code", default=".")
    r.add_argument("--chip", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--only", nargs="*")
    m = sub.add_parser("compare", help="compare two folders of runs")
    m.add_argument("a")
    m.add_argument("b")
    args = p.parse_args()
    if args.cmd == "chip":
        make_chip(args)
    elif args.cmd == "run":
        run_cases(args)
    else:
        return compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
