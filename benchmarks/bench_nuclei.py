"""Nuclei source x cell method x real crop: nucleus scores, in-nucleus transcripts, MECR, assigned.

    python benchmarks/bench_nuclei.py --work /tmp/bench_nuclei            # expansion only
    python benchmarks/bench_nuclei.py --work /tmp/bench_nuclei --methods expansion ucs
    python benchmarks/bench_nuclei.py --work /tmp/bench_nuclei --frontier 2 3 5 8 12

Nuclei sources: ``vendor`` (the bundle's nuclei: Xenium polygons; CosMx rebuilt from
CellComp == "Nuclear"), ``classical-old`` (the classical backend with every switch of the
improved backend off, i.e. the backend before it; on a tree without those switches this is the
backend as it is), ``classical-noseam`` (today's classical with the seam switches of issue 24's
second pass off: ``shape_mask: foreground``, ``seed_dynamic: 0``), ``classical`` (today's
classical defaults; shown only where they differ from ``classical-old``),
``classical-nooversize`` (those with the oversize split of issue 24's fourth pass off),
``classical-novalley`` (those with the valley mask of issue 24's fifth pass off) and
``classical-classifier`` (those plus ``pixel_classifier: true``, issue 24's third pass). Each
crop runs with its platform preset (configs/<platform>.yaml) and ``cells.method`` set per column;
``nuclei.backend`` is set per row.

Reference nuclei are the vendor's (``nuclei.zarr`` of the converted chip; for ``vendor`` rows the
score is 1 by construction), per-transcript flags are the vendor's (``overlaps_nucleus``,
``CellComp``). MECR uses one gene-pair set per crop, found in the vendor's nuclei (the
nucleus-flagged transcripts of each vendor cell), so every row and the vendor's own cells are
scored on the same ruler. ``xenium_breast_top`` is scored on its left half (x < 255 µm, where
settings were tuned) and its right half (held out); a nucleus belongs to the half of its centroid.
``dsb2018`` (manual nuclei, no transcripts) scores nuclei only, at 0.5 µm/px with the settings of
the classical backend's dsb2018 test, with the code defaults and with the Xenium preset's classical
settings. Runs are in-process (``local``); nothing here is timed.

``--frontier D ...`` also runs expansion at each distance D (µm) from every nuclei source and
prints each source's MECR interpolated at the assigned share of expansion from the vendor's
nuclei at the preset distance: MECR compared at equal coverage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
HALF_UM = 255.0
OLD_CLASSICAL = {  # the improved backend's switches, off (nuclei-classical branch)
    "normalise": "false",
    "foreground": "otsu",
    "seeds": "shape",
    "peak_fraction": "null",
    "learn_size": "false",
    "shape_mask": "foreground",
    "seed_dynamic": "0",
}
SEAM_SWITCHES_OFF = {  # the seam switches of issue 24's second pass, off (nuclei2 branch)
    "shape_mask": "foreground",
    "seed_dynamic": "0",
}
CROPS = {
    "xenium_breast_top": {"platform": "xenium", "preset": "xenium.yaml", "options": {}},
    "cosmx_lung12_fov2": {
        "platform": "cosmx",
        "preset": "cosmx.yaml",
        "options": {"pixel_size_um": 0.18, "image_offset_px": {"x": 4800, "y_top": 3648}},
    },
}
FLAG_COLUMNS = ("overlaps_nucleus", "CellComp")


def _classical_fields() -> set[str]:
    try:
        from stseg_dist.nuclei.config import ClassicalNucleiConfig
    except ImportError:  # before the config was split per stage
        from stseg_dist.config import ClassicalNucleiConfig

    return {f.name for f in dataclasses.fields(ClassicalNucleiConfig)}


def _has_new_classical() -> bool:
    return "learn_size" in _classical_fields()


SELECTED: set[str] = set()  # --sources; empty: all


def sources() -> dict[str, list[str]]:
    out = _all_sources()
    return {k: v for k, v in out.items() if k in SELECTED} if SELECTED else out


def _all_sources() -> dict[str, list[str]]:
    out = {"vendor": ["nuclei.backend=vendor"]}
    old = ["nuclei.backend=classical"]
    if _has_new_classical():
        fields = _classical_fields()
        old += [f"nuclei.classical.{k}={v}" for k, v in OLD_CLASSICAL.items() if k in fields]
        out["classical-old"] = old
        if "shape_mask" in fields:
            out["classical-noseam"] = ["nuclei.backend=classical"] + [
                f"nuclei.classical.{k}={v}" for k, v in SEAM_SWITCHES_OFF.items()
            ]
        out["classical"] = ["nuclei.backend=classical"]
        if "oversize_split" in fields:
            out["classical-nooversize"] = [
                "nuclei.backend=classical",
                "nuclei.classical.oversize_split=false",
            ]
        if "shape_valley" in fields:
            out["classical-novalley"] = [
                "nuclei.backend=classical",
                "nuclei.classical.shape_valley=0",
            ]
        if "pixel_classifier" in fields:
            out["classical-classifier"] = [
                "nuclei.backend=classical",
                "nuclei.classical.pixel_classifier=true",
            ]
    else:
        out["classical-old"] = old
    return out


def _flags(tx: pd.DataFrame) -> np.ndarray:
    from stseg_dist.evaluation.references import nucleus_flags

    col = next(c for c in FLAG_COLUMNS if c in tx)
    return nucleus_flags(tx[col], col)


def _vendor_cells(tx: pd.DataFrame) -> np.ndarray:
    col = "vendor_cell_label" if "vendor_cell_label" in tx else "vendor_cell_id"
    ids = pd.Series(tx[col]).astype(str)
    none = ids.isin(["", "0", "-1", "UNASSIGNED", "None", "nan"])
    return np.where(none, 0, pd.factorize(ids)[0] + 1)


def ruler(tx: pd.DataFrame) -> tuple[list[str], list[tuple[int, int]]]:
    """One MECR gene-pair set per crop: genes exclusive across the vendor's nuclei."""
    from stseg_dist.evaluation import metrics as M

    genes = pd.Categorical(tx["gene"])
    nuclei = np.where(_flags(tx), _vendor_cells(tx), 0)
    return list(genes.categories), M.exclusive_gene_pairs(nuclei, genes.codes.astype(np.int64))


def _mecr(cells, genes, categories, pairs) -> float:
    from stseg_dist.evaluation import metrics as M

    codes = pd.Categorical(genes, categories=categories).codes.astype(np.int64)
    return M.mecr(np.asarray(cells), codes, pairs)["mecr"]


def regions(crop: str, ps: float) -> dict[str, float | None]:
    """Region name -> the x (µm) it starts at (None: the whole crop)."""
    if crop == "xenium_breast_top":
        return {"left": -math.inf, "right": HALF_UM}
    return {"all": None}


def _in_region(x_um: np.ndarray, name: str) -> np.ndarray:
    if name == "left":
        return x_um < HALF_UM
    if name == "right":
        return x_um >= HALF_UM
    return np.ones(len(x_um), bool)


def score_run(out: Path, chip, ref_nuclei, categories, pairs, crop) -> dict[str, dict]:
    """Per region: nucleus scores, in-nucleus transcript agreement, MECR, assigned share."""
    import zarr

    from stseg_dist.evaluation import nuclei as NM
    from stseg_dist.evaluation.metrics import contingency

    pred = zarr.open_group(str(out / "labels.zarr"), mode="r")["nuclei"][:]
    table = contingency(pred, ref_nuclei)
    ps, (x0, _) = chip.pixel_size_um, chip.origin_um
    pid, _, pcol = NM.label_centroids(pred)
    rid, _, rcol = NM.label_centroids(ref_nuclei)
    tx = pd.read_parquet(out / "transcripts.parquet")
    res = {}
    for name in regions(crop, ps):

        def px_x(col):
            return x0 + (col + 0.5) * ps

        sel_p = pid[_in_region(px_x(pcol), name)]
        sel_r = rid[_in_region(px_x(rcol), name)]
        m = NM.nucleus_scores(table, pred_ids=sel_p, ref_ids=sel_r)
        t = tx[_in_region(tx["x"].to_numpy(), name)]
        m.update(NM.transcript_nucleus_agreement(t["in_nucleus"].to_numpy(), _flags(t)))
        m["mecr"] = _mecr(t["cell_id"].to_numpy(), t["gene"].to_numpy(), categories, pairs)
        m["assigned"] = float((t["cell_id"].to_numpy() > 0).mean())
        m["n_cells"] = int(t.loc[t.cell_id > 0, "cell_id"].nunique())
        res[name] = m
    return res


def vendor_cells_row(chip_tx: pd.DataFrame, categories, pairs, crop) -> dict[str, dict]:
    res = {}
    for name in regions(crop, 0):
        t = chip_tx[_in_region(chip_tx["x"].to_numpy(), name)]
        cells = _vendor_cells(t)
        res[name] = {
            "mecr": _mecr(cells, t["gene"].to_numpy(), categories, pairs),
            "assigned": float((cells > 0).mean()),
            "n_cells": len(np.unique(cells[cells > 0])),
        }
    return res


def run_crop(
    crop: str, work: Path, methods: list[str], frontier: list[float] = ()
) -> tuple[list[dict], list[dict]]:
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline
    from stseg_dist.io.bundles import convert_bundle
    from stseg_dist.io.chip import open_chip

    spec = CROPS[crop]
    chip_dir = work / crop / "chip"
    if not (chip_dir / "chip.json").exists():
        convert_bundle(
            str(DATA / crop),
            str(chip_dir),
            spec["platform"],
            options=spec["options"],
            overwrite=True,
        )
    chip = open_chip(str(chip_dir))
    h, w = chip.shape_yx
    ref = chip.read_nuclei(slice(0, h), slice(0, w))
    chip_tx = pd.read_parquet(chip_dir / "transcripts.parquet")
    categories, pairs = ruler(chip_tx)
    rows = []
    for name, region in vendor_cells_row(chip_tx, categories, pairs, crop).items():
        rows.append({"crop": crop, "region": name, "nuclei": "(vendor's own cells)", **region})
    runs = [(src, items, m, []) for src, items in sources().items() for m in methods]
    runs += [
        (src, items, f"expansion@{d:g}", [f"cells.expansion.distance_um={d}"])
        for src, items in sources().items()
        for d in frontier
    ]
    points = []
    for src, items, method, extra in runs:
        out = work / crop / f"{src}-{method}"
        cfg = load_config(
            str(REPO / "configs" / spec["preset"]),
            parse_set(
                [*items, f"cells.method={method.split('@')[0]}", "runtime.progress=false"] + extra
            ),
            use_env=False,
        )
        t0 = time.perf_counter()
        if not (out / "run.json").exists():
            run_pipeline(str(chip_dir), str(out), cfg, local=True)
        secs = time.perf_counter() - t0
        for name, m in score_run(out, chip, ref, categories, pairs, crop).items():
            row = {"crop": crop, "region": name, "nuclei": src, "method": method, **m}
            row["seconds_contended"] = round(secs, 1)
            (points if extra else rows).append(row)
    return rows, equal_coverage(rows, points)


def equal_coverage(rows: list[dict], points: list[dict]) -> list[dict]:
    """Each source's expansion MECR at the assigned share of expansion from vendor nuclei."""
    out = []
    for target in (r for r in rows if r["nuclei"] == "vendor" and r["method"] == "expansion"):
        for src in dict.fromkeys(p["nuclei"] for p in points):
            pts = sorted(
                (p["assigned"], p["mecr"])
                for p in points + rows
                if p["nuclei"] == src
                and p["region"] == target["region"]
                and p["method"].startswith("expansion")
            )
            a, m = np.array(pts).T
            inside = a[0] <= target["assigned"] <= a[-1]
            out.append(
                {
                    "crop": target["crop"],
                    "region": target["region"],
                    "nuclei": src,
                    "assigned": target["assigned"],
                    "mecr": float(np.interp(target["assigned"], a, m)) if inside else float("nan"),
                    "range": f"{a[0]:.3f}..{a[-1]:.3f}",
                }
            )
    return out


def run_dsb2018(work: Path) -> list[dict]:
    """Classical nuclei on the dsb2018 image (0.5 µm/px) against its manual nuclei."""
    import pyarrow as pa
    import tifffile

    from stseg_dist.config import load_config, parse_set
    from stseg_dist.evaluation import nuclei as NM
    from stseg_dist.io.chip import open_chip
    from stseg_dist.io.chip_writer import ChipWriter
    from stseg_dist.lifecycle import PrepareContext
    from stseg_dist.nuclei.classical import ClassicalNuclei
    from stseg_dist.tiling import make_grid

    img = tifffile.imread(DATA / "dsb2018_nuclei" / "img2d.tif")
    truth = tifffile.imread(DATA / "dsb2018_nuclei" / "mask2d.tif").astype(np.uint32)
    path = work / "dsb2018" / "chip"
    with ChipWriter(str(path), img.shape, 0.5, platform="test", overwrite=True) as wr:
        wr.write_image(np.s_[:, :], img.astype(np.uint16))
        wr.write_transcripts(pa.table({"x": [1.0], "y": [1.0], "gene": ["g"]}))
    chip = open_chip(str(path))
    dsb = [  # the settings of tests/nuclei/test_classical.py::test_classical_on_dsb2018
        "nuclei.classical.sigma_um=0.5",
        "nuclei.classical.min_area_um2=4",
        "nuclei.classical.min_distance_um=2.5",
        "nuclei.classical.footprint_um=3",
    ]
    grid = make_grid(chip.shape_yx, chip.pixel_size_um, 1e6, 0.0, 256)
    rows = []
    # the code defaults (no preset: dsb2018 has no platform), then the Xenium preset's classical
    # settings (the dense-tissue and seam switches) with the same overrides
    runs = [  # the classifier needs the presets' intensity seeds: with the presets only
        (src, items, None)
        for src, items in sources().items()
        if src
        not in ("vendor", "classical-classifier", "classical-nooversize", "classical-novalley")
    ]
    runs += [
        (f"{src} (xenium preset)", items, str(REPO / "configs" / "xenium.yaml"))
        for src, items in sources().items()
        if src
        in (
            "classical-noseam",
            "classical-nooversize",
            "classical-novalley",
            "classical",
            "classical-classifier",
        )
    ]
    for src, items, preset in runs:
        cfg = load_config(preset, overrides=parse_set([*items, *dsb]), use_env=False)
        backend = ClassicalNuclei(cfg, chip)
        ctx = PrepareContext(
            chip, cfg, grid, [], lambda fn, idx, desc="", g=grid: [fn(g[i]) for i in idx]
        )
        backend.load(backend.prepare(ctx))
        pred = backend.segment(grid[0]).astype(np.uint32)
        m = NM.nucleus_metrics(pred, truth)
        rows.append({"crop": "dsb2018", "region": "all", "nuclei": src, "method": "-", **m})
    return rows


def _f(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    head = (
        "| crop | region | nuclei | cells | nuclei (ref) | containment F1 | IoU F1 | missed | "
        "merged | split | in-nucleus tx precision / recall | MECR | assigned | cells |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["crop"],
                    r["region"],
                    r["nuclei"],
                    r.get("method", ""),
                    f"{r['n_pred']} ({r['n_ref']})" if "n_pred" in r else "",
                    _f(r.get("containment_f1")),
                    _f(r.get("iou50_f1")),
                    _f(r.get("missed")),
                    _f(r.get("merged")),
                    _f(r.get("split")),
                    (
                        f"{r['transcript_precision']:.3f} / {r['transcript_recall']:.3f}"
                        if "transcript_precision" in r
                        else ""
                    ),
                    _f(r.get("mecr")),
                    _f(r.get("assigned")),
                    _f(r.get("n_cells")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/bench_nuclei", help="scratch folder (runs are reused)")
    p.add_argument("--methods", nargs="+", default=["expansion"])
    p.add_argument("--crops", nargs="+", default=[*CROPS, "dsb2018"])
    p.add_argument("--frontier", nargs="*", type=float, default=[], help="expansion distances")
    p.add_argument("--sources", nargs="+", help="only these nuclei sources (default: all)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.sources:
        unknown = set(args.sources) - set(sources())
        if unknown:
            p.error(f"unknown --sources {sorted(unknown)}; known: {sorted(sources())}")
        SELECTED.update(args.sources)
    work = Path(args.work)
    rows: list[dict] = []
    equal: list[dict] = []
    for crop in args.crops:
        if crop == "dsb2018":
            rows += run_dsb2018(work)
            continue
        r, e = run_crop(crop, work, args.methods, args.frontier)
        rows += r
        equal += e
    print(table(rows))
    if equal:
        print("\nExpansion MECR at equal coverage (interpolated along each source's frontier):\n")
        print("| crop | region | nuclei | assigned | MECR | frontier's assigned range |")
        print("|---|---|---|---|---|---|")
        for e in equal:
            print(
                f"| {e['crop']} | {e['region']} | {e['nuclei']} | {e['assigned']:.3f} | "
                f"{_f(e['mecr'])} | {e['range']} |"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "equal_coverage": equal}, indent=1, default=float)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
