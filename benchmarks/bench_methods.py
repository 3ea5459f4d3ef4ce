"""Compare cell methods on generated chips with ground truth; print accuracy and throughput.

    python benchmarks/bench_methods.py --size-um 600 --seeds 0 1 --methods expansion ucs

Accuracy: cell F1 matched at IoU >= 0.5, fraction of transcripts assigned to their true cell
(a predicted cell stands for the true cell it overlaps most), and recall of the cells whose
nucleus is missing from the image. Throughput: wall seconds and transcripts/s of the whole run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from skimage.metrics import contingency_table

from stseg_dist.config import load_config, parse_set
from stseg_dist.driver import run_pipeline
from stseg_dist.synth import synth_chip


def score(chip: str, out: str) -> dict:
    pred = zarr.open_array(f"{out}/labels.zarr/cells")[:].astype(np.int64)
    truth = zarr.open_array(f"{chip}/truth/cells.zarr")[:].astype(np.int64)
    ct = contingency_table(truth, pred).tocoo()
    at, ap = np.bincount(truth.ravel()), np.bincount(pred.ravel(), minlength=pred.max() + 1)
    keep = (ct.row > 0) & (ct.col > 0)
    iou = ct.data[keep] / (at[ct.row[keep]] + ap[ct.col[keep]] - ct.data[keep])
    matched_true = set(ct.row[keep][iou >= 0.5])
    n_true, n_pred = len(np.unique(truth)) - 1, len(np.unique(pred)) - 1
    f1 = 2 * len(matched_true) / max(1, n_true + n_pred)
    tx = pd.read_parquet(f"{out}/transcripts.parquet", columns=["cell_id", "cell_true"])
    best = np.asarray(contingency_table(pred, truth).tocsr().argmax(axis=1)).ravel()
    cid = tx.cell_id.to_numpy()
    mapped = np.where(cid > 0, best[cid], 0)
    right = float((mapped == tx.cell_true.to_numpy()).mean())
    cells = pd.read_parquet(f"{chip}/truth/cells.parquet")
    missing = cells.cell_id[~cells.has_visible_nucleus].to_numpy()
    return {"cell_f1_iou50": f1, "right_cell_fraction": right,
            "missing_cell_recall": float(np.isin(missing, list(matched_true)).mean()) if len(missing) else float("nan"),
            "n_cells": n_pred, "n_true_cells": n_true}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-um", type=float, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=["expansion", "ucs"])
    p.add_argument("--set", action="append", default=[], help="config override for every run")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--membrane", action="store_true", help="chips carry a membrane stain (channel 1)")
    p.add_argument("--membrane-shift", type=int, nargs=2, default=(0, 0), metavar=("DY", "DX"),
                   help="write the membrane stain offset by this many pixels (a second imaging round)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            chip = str(Path(tmp) / f"chip{seed}")
            synth_chip(chip, args.size_um, args.size_um, seed, membrane=args.membrane or any(args.membrane_shift))
            if any(args.membrane_shift):
                from stseg_dist.methods.membrane.registration import apply_offset

                image = zarr.open_array(f"{chip}/image.zarr", mode="r+")
                image[1] = apply_offset(image[1], tuple(args.membrane_shift), fill=100)
            for method in args.methods:
                cfg = load_config(overrides=parse_set([f"cells.method={method}", "tiling.tile_size_um=150",
                                                       "runtime.progress=false", *args.set]), use_env=False)
                out = str(Path(tmp) / f"{method}{seed}")
                t0 = time.perf_counter()
                summary = run_pipeline(chip, out, cfg, local=True)
                secs = time.perf_counter() - t0
                row = {"seed": seed, "method": method, **score(chip, out), "seconds": secs,
                       "transcripts_per_s": summary["counts"]["n_transcripts"] / secs,
                       "stage_seconds": summary["stage_seconds"]}
                rows.append(row)
                print(f"seed {seed} {method:10s} F1@0.5 {row['cell_f1_iou50']:.3f}  right-cell "
                      f"{row['right_cell_fraction']:.3f}  missing-cell recall {row['missing_cell_recall']:.3f}  "
                      f"cells {row['n_cells']}/{row['n_true_cells']}  {secs:.1f} s "
                      f"({row['transcripts_per_s']:,.0f} transcripts/s)", flush=True)
    df = pd.DataFrame(rows).drop(columns=["stage_seconds"])
    print(df.groupby("method")[["cell_f1_iou50", "right_cell_fraction", "missing_cell_recall",
                                "transcripts_per_s"]].mean().to_string(float_format=lambda v: f"{v:.3f}"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
