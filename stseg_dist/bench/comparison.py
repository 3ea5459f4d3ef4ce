"""``stseg bench --methods``: cell methods side by side on the same chips, scored the same way.

    stseg bench -- --methods expansion ucs membrane --size-um 400 --seeds 0 1 [--hard]
                   [--real ../shared/data]

Every method runs through the real pipeline (same nuclei, tiling and stitching) on:

- generated chips with ground truth (with a membrane channel, so stain-based methods have one):
  cell F1 matched at IoU >= 0.5, fraction of transcripts in their true cell, and recall of the
  cells whose nucleus is invisible in the stain;
- every shared real crop of ``--real`` with a reference (REAL_CROPS: vendor bundles read by our
  readers, the same nuclei for every method): cell F1 at IoU >= 0.5 against a reference mask,
  ARI against a per-transcript reference, and everywhere the reference-free MECR,
  nucleus-cytoplasm r and assigned share (the vendor's own MECR and assigned share beside them).
  Crops whose reference is a nucleus expansion or nucleus-sized are marked: F1/ARI against them
  favour that shape, so MECR and the assigned share judge methods there;

plus the wall seconds and transcripts/s of each run. A method that cannot run on a chip (a
membrane method on a chip with no membrane stain) is reported as not applicable. Figures are printed
as one table and written as JSON; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import constants as C


@dataclass(frozen=True)
class RealCrop:
    """A shared real crop with a reference, and what its bundle lacks
    (facts from the data's README).
    """

    platform: str
    options: dict
    table: str | None = None  # the transcript file inside the folder, for the generic reader
    overrides: tuple = ()  # facts about the sample that the bundle cannot say (e.g. cell size)
    #: the reference is a nucleus expansion or nucleus-sized: cell F1/ARI against it favour that
    #: shape by construction, so judge methods by MECR and the assigned share there
    shape_biased: bool = False
    #: settings are tuned on x < split_x_um and reported on x >= split_x_um (µm, chip frame)
    split_x_um: float | None = None


#: The shared real crops with a reference (crops of larger acquisitions: pixel size and image
#: placement come from the data's README).
REAL_CROPS = {
    "cosmx_lung12_fov2": RealCrop(
        "cosmx", {"pixel_size_um": 0.18, "image_offset_px": {"x": 4800, "y_top": 3648}}
    ),
    # the MERSCOPE JPEG is ~9x block-upsampled: every 4th pixel (0.43 µm) keeps its detail;
    # its vendor cells are nucleus-sized (median ~58 µm²)
    "merscope_mousebrain": RealCrop(
        "merscope",
        {"image_bounds_um": [6400, 4700, 6900, 5150], "image_downsample": 4},
        shape_biased=True,
    ),
    # vendor cells are Xenium's nucleus expansion; no image, vendor nuclei
    "xenium_lung_preview": RealCrop("xenium", {}, shape_biased=True),
    # dense breast tumour; vendor cells are Xenium's nucleus expansion, nuclei approximate vendor
    # polygons; tune on the left half, report the right
    "xenium_breast_top": RealCrop("xenium", {}, shape_biased=True, split_x_um=255.0),
    # MERFISH U2-OS: reference cells drawn independently of the nuclei; native pixels
    # (0.108 µm assumed)
    "merfish_u2os": RealCrop(
        "generic",
        {
            "pixel_size_um": 0.5,
            "coordinate_um": 0.108,
            "nuclei": "nucleus_boundaries.csv",
            "cells": "cell_boundaries.csv",
            "cell_column": "cell",
        },
        table="transcripts.csv.gz",
        # cultured cells of 900-2,100 µm² (data README): ~40 µm across
        overrides=("cells.cell_diameter_um=40",),
    ),
}

#: Per-transcript reference cell columns, in order of preference.
VENDOR_COLUMNS = ("vendor_cell_label", "vendor_cell_id")


@dataclass
class Dataset:
    """A chip to run every method on, and how to score it."""

    name: str
    chip: str
    platform: str = "synthetic"
    reference: str | None = (
        None  # label mask of the vendor cells (real crops), if the bundle has one
    )
    vendor_column: str | None = (
        None  # per-transcript vendor cell label (real crops), if the bundle has one
    )
    config: str | None = None  # platform preset YAML
    overrides: tuple = ()  # what the converted chip needs (e.g. vendor nuclei on a stain-free chip)
    shape_biased: bool = False  # see RealCrop
    split_x_um: float | None = None  # see RealCrop
    info: dict = field(default_factory=dict)


def synthetic_datasets(
    workdir: str, size_um: float, seeds, membrane_shift=(0, 0), hard: bool = False
) -> list[Dataset]:
    """Generated chips with a membrane stain, optionally offset by ``membrane_shift`` (dy, dx) px
    as if imaged in a second round (what ``membrane`` registration must undo); ``hard``: the
    generator's real-tissue preset (synth.HARD).
    """
    from ..synth import HARD, synth_chip

    out = []
    for seed in seeds:
        chip = str(Path(workdir) / f"synthetic{seed}")
        info = synth_chip(
            chip, size_um, size_um, seed, membrane=True, overwrite=True, **(HARD if hard else {})
        )
        if any(membrane_shift):
            import zarr

            from ..methods.membrane.registration import apply_offset

            image = zarr.open_array(f"{chip}/image.zarr", mode="r+")
            image[1] = apply_offset(image[1], tuple(membrane_shift), fill=100)
        out.append(Dataset(f"synthetic{seed}", chip, info={"n_transcripts": info["n_transcripts"]}))
    return out


def real_datasets(workdir: str, data_root: str, names=None) -> list[Dataset]:
    """Convert each shared crop with a reference into a chip (``names``: a subset of REAL_CROPS)."""
    import pyarrow.parquet as pq

    from ..io.bundles import convert_bundle, pipeline_hints
    from ..io.storage import exists

    configs = Path(__file__).resolve().parents[2] / "configs"  # the repository's presets
    out = []
    for folder, crop in REAL_CROPS.items():
        src = Path(data_root) / folder
        if (names and folder not in names) or not src.exists():
            continue
        chip = str(Path(workdir) / folder)
        rep = convert_bundle(
            str(src / crop.table) if crop.table else str(src),
            chip,
            crop.platform,
            options=crop.options,
            overwrite=True,
        )
        preset = configs / f"{crop.platform}.yaml"
        hints = [
            f"{k}.{kk}={vv}"
            for k, v in pipeline_hints(rep).items()
            for kk, vv in v.items()
            if not isinstance(vv, dict)
        ]
        mask = str(Path(chip) / "vendor_cells.zarr")
        columns = pq.read_schema(f"{chip}/{C.TRANSCRIPTS_PARQUET}").names
        out.append(
            Dataset(
                folder,
                chip,
                crop.platform,
                reference=mask if exists(mask) else None,
                vendor_column=next((c for c in VENDOR_COLUMNS if c in columns), None),
                config=str(preset) if preset.exists() else None,
                overrides=(*hints, *crop.overrides),
                shape_biased=crop.shape_biased,
                split_x_um=crop.split_x_um,
                info={"n_transcripts": rep["n_transcripts"]},
            )
        )
    return out


def missing_cell_recall(chip: str, out: str) -> float:
    """Of the true cells with no visible nucleus, the fraction matched by a predicted cell
    (IoU >= 0.5).
    """
    import zarr

    from ..evaluation.metrics import contingency, iou_matrix
    from ..synth import TRUTH_CELLS_PARQUET

    cells = pd.read_parquet(f"{chip}/{TRUTH_CELLS_PARQUET}")
    missing = cells.cell_id[~cells.has_visible_nucleus].to_numpy()
    if not len(missing):
        return float("nan")
    truth = zarr.open_array(f"{chip}/{C.TRUTH_CELLS_ZARR}", mode="r")
    pred = zarr.open_array(f"{out}/{C.LABELS_ZARR}/cells", mode="r")
    iou = iou_matrix(contingency(pred, truth)).tocoo()
    return float(np.isin(missing, iou.col[iou.data >= 0.5]).mean())


def vendor_reference(chip: str, out: str, column: str) -> pd.DataFrame:
    """Our cell and the vendor's per transcript (``input_row`` joins the two; 0 = unassigned)."""
    ours = pd.read_parquet(
        f"{out}/{C.TRANSCRIPTS_PARQUET}", columns=[C.INPUT_ROW, C.CELL_ID, C.GENE]
    )
    vendor = pd.read_parquet(f"{chip}/{C.TRANSCRIPTS_PARQUET}", columns=[column])[column]
    if not pd.api.types.is_integer_dtype(vendor):
        ids = vendor.astype(str)
        vendor = pd.Series(
            np.where(ids.isin(["", "0", "-1", "UNASSIGNED"]), 0, pd.factorize(ids)[0] + 1)
        )
    return pd.DataFrame(
        {
            "ours": ours[C.CELL_ID].to_numpy(),
            "gene": ours[C.GENE].to_numpy(),
            "vendor": vendor.to_numpy(np.int64)[ours[C.INPUT_ROW].to_numpy()],
        }
    )


def score(ds: Dataset, out: str) -> dict:
    """Truth metrics on generated chips; on real crops cell F1 (vendor mask), ARI (vendor cell
    per transcript), and everywhere the reference-free MECR, nucleus-cytoplasm r and assigned share
    (with the vendor's own MECR and assigned share on the same gene pairs).
    """
    from ..evaluation.evaluate import evaluate
    from ..evaluation.metrics import adjusted_rand_index, mecr

    if ds.reference is None and ds.vendor_column is None:
        m = evaluate(out, ds.chip)
        return {
            "cell_f1_iou50": m["instance"]["f1"],
            "right_cell_fraction": m["transcripts"]["fraction_correct"],
            "missing_cell_recall": missing_cell_recall(ds.chip, out),
            **_free(m),
            "n_cells": m["instance"]["n_pred_cells"],
            "n_ref_cells": m["instance"]["n_ref_cells"],
        }
    m = evaluate(out, ds.reference)
    row = {
        "cell_f1_iou50": m["instance"]["f1"] if ds.reference else float("nan"),
        **_free(m),
        "n_cells": m["baseline"]["n_cells"],
        "n_ref_cells": m["instance"]["n_ref_cells"] if ds.reference else -1,
    }
    if ds.vendor_column:
        ref = vendor_reference(ds.chip, out, ds.vendor_column)
        row["vendor_ari"] = adjusted_rand_index(ref.ours.to_numpy(), ref.vendor.to_numpy())
        cat = pd.Categorical(ref.gene)
        index = {g: i for i, g in enumerate(cat.categories)}
        pairs = [(index[a], index[b]) for a, b in m["reference_free"]["gene_pairs"]]
        row["vendor_mecr"] = mecr(ref.vendor.to_numpy(), cat.codes.astype(np.int64), pairs)["mecr"]
        row["vendor_assigned"] = float((ref.vendor.to_numpy() > 0).mean())
    return row


def _free(m: dict) -> dict:
    f = m["reference_free"]
    return {
        "mecr": f["mecr"],
        "assigned_share": f["assigned_share"],
        "nucleus_cytoplasm_r": f["nucleus_cytoplasm_r"],
    }


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``METHOD[:KEY=VALUE...]`` -> (method, overrides): one method configuration per spec."""
    method, *sets = spec.split(":")
    return method, sets


def run_pipeline_only(ds: Dataset, method: str, out: str, overrides: list[str], local: bool):
    """Run ``method`` on the dataset through the real pipeline: (run summary, wall seconds)."""
    from ..config import load_config, parse_set
    from ..driver import run_pipeline

    cfg = load_config(
        ds.config,
        overrides=parse_set(
            [f"cells.method={method}", "runtime.progress=false", *ds.overrides, *overrides]
        ),
        use_env=False,
    )
    t0 = time.perf_counter()
    summary = run_pipeline(ds.chip, out, cfg, local=local)
    return summary, time.perf_counter() - t0


def run_method(ds: Dataset, spec: str, out: str, overrides: list[str], local: bool) -> dict:
    from .frontier import plane_points

    method, sets = parse_spec(spec)
    summary, secs = run_pipeline_only(ds, method, out, [*overrides, *sets], local)
    n_tx = summary["counts"]["n_transcripts"]
    real = ds.reference is not None or ds.vendor_column is not None
    return {
        "dataset": ds.name,
        "method": method,
        "label": spec,
        "shape_biased": ds.shape_biased,
        **score(ds, out),
        "plane": plane_points(ds.chip, out, ds.split_x_um, ds.vendor_column) if real else None,
        "seconds": secs,
        "transcripts_per_s": n_tx / secs,
        "n_transcripts": n_tx,
        "stage_seconds": summary["stage_seconds"],
    }


def compare_methods(
    methods, datasets: list[Dataset], workdir: str, overrides=(), *, local: bool = True, echo=print
) -> list[dict]:
    """Run every method on every dataset; one row each, echoed as it finishes."""
    from ..errors import InputError

    rows = []
    for ds in datasets:
        for k, method in enumerate(methods):
            try:
                row = run_method(
                    ds, method, str(Path(workdir) / f"{ds.name}-{k}"), list(overrides), local
                )
            except InputError as exc:  # e.g. a stain-based method on a chip without that stain
                echo(f"{ds.name:<22} {method:<11} not applicable: {exc}")
                continue
            rows.append(row)
            echo(format_row(row))
    return rows


METRICS = (
    ("cell_f1_iou50", "F1@0.5"),
    ("right_cell_fraction", "right-cell"),
    ("missing_cell_recall", "missing-cell recall"),
    ("vendor_ari", "vendor ARI"),
    ("mecr", "MECR"),
    ("vendor_mecr", "vendor MECR"),
    ("assigned_share", "assigned"),
    ("vendor_assigned", "vendor assigned"),
    ("nucleus_cytoplasm_r", "nuc-cyto r"),
)


def format_row(r: dict) -> str:
    parts = [f"{r['dataset']:<22} {r.get('label', r['method']):<11}"]
    parts += [f"{label} {r[key]:.3f}" for key, label in METRICS if key in r and not pd.isna(r[key])]
    parts.append(
        f"cells {r['n_cells']}/{r['n_ref_cells']}  {r['seconds']:.1f} s "
        f"({r['transcripts_per_s']:,.0f} tx/s)"
    )
    return "  ".join(parts)


def summary_table(rows: list[dict]) -> str:
    """Methods as rows; generated chips averaged over seeds, real crops one column group each.

    A crop marked * has a reference that is a nucleus expansion or nucleus-sized: F1 and ARI
    against it favour that shape, so MECR and the assigned share judge methods there.
    """
    df = pd.DataFrame(rows)
    biased = set(
        df.dataset[
            df.get("shape_biased", pd.Series(False, index=df.index)).fillna(False).astype(bool)
        ]
    )
    df["group"] = np.where(
        df.dataset.str.startswith("synthetic"),
        "synthetic",
        df.dataset + np.where(df.dataset.isin(biased), "*", ""),
    )
    cols = [c for c, _ in METRICS if c in df] + ["transcripts_per_s"]
    fmt = lambda v: f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"  # noqa: E731
    blocks = []
    for group, g in df.groupby("group", sort=False):
        key = "label" if "label" in g else "method"
        table = g.groupby(key, sort=False)[cols].mean().dropna(axis=1, how="all")
        blocks.append(f"{group}\n{table.to_string(float_format=fmt)}")
    note = (
        "\n* reference is a nucleus expansion or nucleus-sized: judge by MECR and assigned share"
        if biased
        else ""
    )
    return "\n\n".join(blocks) + note


def default_data_root() -> str | None:
    root = Path(__file__).resolve().parents[3] / "shared" / "data"  # beside the repository
    return str(root) if root.exists() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="stseg bench --methods",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--methods",
        nargs="+",
        required=True,
        help="methods, each optionally with settings: METHOD[:KEY=VALUE...] "
        "(e.g. ucs:cells.ucs.growth_um=6)",
    )
    p.add_argument("--size-um", type=float, default=400.0, help="side of each generated chip")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0],
        help="seeds of the generated chips (--seeds alone: none)",
    )
    p.add_argument(
        "--membrane-shift",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("DY", "DX"),
        help="offset the generated chips' membrane stain by this many pixels",
    )
    p.add_argument(
        "--hard", action="store_true", help="generated chips closer to real tissue (synth.HARD)"
    )
    p.add_argument(
        "--real", default=default_data_root(), help="folder of the shared real crops ('' to skip)"
    )
    p.add_argument("--tile-um", type=float, default=150.0)
    p.add_argument(
        "--ray", action="store_true", help="run on Ray (default: single process, same kernels)"
    )
    p.add_argument("--set", action="append", default=[], help="config override for every run")
    p.add_argument("--json", help="write the rows here")
    p.add_argument(
        "--frontier",
        metavar="DIR",
        help="draw each real crop's coverage-contamination plane (expansion frontier and every "
        "run on it) into DIR: frontier_<crop>_<region>.png, frontier.md, frontier.json",
    )
    p.add_argument(
        "--frontier-um",
        type=float,
        nargs="+",
        default=None,
        help="expansion distances of the frontier (default 1-15 µm)",
    )
    p.add_argument("--crops", nargs="+", help="only these real crops (names of REAL_CROPS)")
    p.add_argument("--workdir", help="keep chips and outputs here (default: a temporary folder)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    overrides = [f"tiling.tile_size_um={args.tile_um}", *args.set]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        datasets = synthetic_datasets(tmp, args.size_um, args.seeds, args.membrane_shift, args.hard)
        if args.real:
            datasets += real_datasets(tmp, args.real, args.crops)
        echo = lambda s: print(s, flush=True)  # noqa: E731
        rows = compare_methods(
            args.methods, datasets, tmp, overrides, local=not args.ray, echo=echo
        )
        if args.frontier and rows:
            from .frontier import FRONTIER_UM, write_planes

            real = [d for d in datasets if d.reference is not None or d.vendor_column is not None]
            write_planes(
                real,
                rows,
                tmp,
                args.frontier,
                run_pipeline_only,
                overrides,
                args.frontier_um or FRONTIER_UM,
                local=not args.ray,
                echo=echo,
            )
    print(summary_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0
