"""UCS training and inference throughput, in process (no Ray), on a constructed tile; or whole
runs on a generated chip against expansion.

    python benchmarks/bench_ucs.py --size-px 256 --cells 60 --epochs 4
    python benchmarks/bench_ucs.py --chip-um 1000 --variants stseg paper [--device cuda]

With ``--chip-um`` it generates a chip, runs ``stseg run`` on it with expansion and with each UCS
variant (in process, one tile worker; ``--ray``: on an embedded Ray, all cores), and prints each
run's stage seconds, training epochs and transcripts/s, and its cost relative to expansion: the
figures of the UCS speed issue.

Builds one tile of round nuclei with transcripts dense around each, trains UCS on patches
centred on its nuclei, then segments the tile. Prints pixels/s and transcripts/s for training
(patch bins x epochs) and for inference (tile bins, tile transcripts), so the numbers scale to a
chip by its area and transcript count.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from stseg_dist.config import load_config, parse_set
from stseg_dist.methods.base import TileData, TileTranscripts
from stseg_dist.methods.common.bins import bin_tile
from stseg_dist.methods.ucs.method import UCSMethod, _patches_for
from stseg_dist.methods.ucs.training import train_ucs
from stseg_dist.tiling import Tile


def make_tile(size: int, n_cells: int, n_genes: int, seed: int) -> TileData:
    """Round nuclei (radius 3 px) on a jittered grid, 250 transcripts within 7 px of each."""
    rng = np.random.default_rng(seed)
    nuclei = np.zeros((size, size), np.uint32)
    yy, xx = np.mgrid[:size, :size]
    side = int(np.ceil(np.sqrt(n_cells)))
    step = size / side
    rows, cols, genes = [], [], []
    for k in range(n_cells):
        cy = (k // side + 0.5) * step + rng.uniform(-2, 2)
        cx = (k % side + 0.5) * step + rng.uniform(-2, 2)
        nuclei[((yy - cy) ** 2 + (xx - cx) ** 2 <= 9) & (nuclei == 0)] = k + 1
        r = rng.uniform(0, 7, 250)
        a = rng.uniform(0, 2 * np.pi, 250)
        rows.append(cy + r * np.sin(a))
        cols.append(cx + r * np.cos(a))
        genes.append(rng.integers(0, n_genes, 250))
    n_bg = size * size // 50
    rows.append(rng.uniform(0, size, n_bg))
    cols.append(rng.uniform(0, size, n_bg))
    genes.append(rng.integers(0, n_genes, n_bg))
    y, x, g = (np.concatenate(v) for v in (rows, cols, genes))
    keep = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    y, x, g = y[keep], x[keep], g[keep].astype(np.int32)
    tx = TileTranscripts(
        x=x,
        y=y,
        gene=g,
        row=y.astype(np.int64),
        col=x.astype(np.int64),
        in_core=np.ones(len(x), bool),
        row_index=np.arange(len(x), dtype=np.int64),
    )
    tile = Tile(0, 0, 0, (0, size, 0, size), (0, size, 0, size))
    return TileData(
        tile=tile,
        pixel_size_um=1.0,
        origin_um=(0.0, 0.0),
        image=np.zeros((1, size, size), np.uint16),
        nuclei=nuclei,
        transcripts=tx,
        genes=[f"g{i}" for i in range(n_genes)],
    )


def run_chip(
    chip_um: float,
    variants: list[str],
    device: str | None,
    sets: list[str],
    work: str,
    ray: bool = False,
) -> list[dict]:
    """``stseg run`` on one generated chip: expansion, then UCS in each variant (in process, or
    on an embedded Ray with ``ray``).
    """
    import os

    from stseg_dist import cli
    from stseg_dist.synth import synth_chip

    chip = os.path.join(work, f"chip{int(chip_um)}")
    if not os.path.exists(os.path.join(chip, "chip.json")):
        synth_chip(chip, chip_um, chip_um, seed=1)
    if device == "cpu":  # torch picks the GPU wherever one is visible
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    rows = []
    for name, extra in [
        ("expansion", []),
        *[(f"ucs-{v}", ["cells.method=ucs", f"cells.ucs.variant={v}"]) for v in variants],
    ]:
        out = os.path.join(work, f"out-{int(chip_um)}-{name}-{time.time_ns()}")
        args = [
            "run",
            "--chip",
            chip,
            "--out",
            out,
            *([] if ray else ["--local"]),
            "--no-progress",
            "--no-spatialdata",
        ]
        for item in [*extra, *sets]:
            args += ["--set", item]
        t0 = time.perf_counter()
        if cli.main(args) != 0:
            raise SystemExit(f"stseg run failed for {name}; see {out}/run.json")
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "run.json")) as fh:
            run = json.load(fh)
        method = run.get("method") or {}
        rows.append(
            {
                "run": name,
                "device": method.get("device"),
                "wall_s": round(wall, 1),
                "stages_s": {k: round(v, 1) for k, v in run["stage_seconds"].items()},
                "epochs": {k: len(v) for k, v in (method.get("loss") or {}).items()},
                "transcripts_per_s": round(run["n_transcripts_written"] / wall),
            }
        )
    base = rows[0]["wall_s"]
    for r in rows:
        r["x_expansion"] = round(r["wall_s"] / base, 1)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-px", type=int, default=256)
    p.add_argument("--cells", type=int, default=60)
    p.add_argument("--genes", type=int, default=50)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        help="config override, e.g. cells.ucs.expression_profile=false",
    )
    p.add_argument(
        "--chip-um", type=float, help="whole runs on a generated chip of this side instead"
    )
    p.add_argument("--variants", nargs="+", default=["stseg", "paper"])
    p.add_argument("--device", choices=["cpu", "cuda"], help="with --chip-um: hide the GPU for cpu")
    p.add_argument(
        "--work", default="bench-ucs", help="with --chip-um: folder for the chip and the runs"
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="with --chip-um: run on an embedded Ray (default: in process)",
    )
    args = p.parse_args(argv)
    if args.chip_um:
        for row in run_chip(
            args.chip_um, args.variants, args.device, args.set, args.work, args.ray
        ):
            print(json.dumps(row))
        return 0
    torch.set_num_threads(args.threads)
    config = load_config(
        overrides=parse_set(["cells.method=ucs", f"cells.ucs.epochs={args.epochs}", *args.set]),
        use_env=False,
    )
    method = UCSMethod(config)  # default chip facts: 1 µm bins, an imaged stain
    data = make_tile(args.size_px, args.cells, args.genes, args.seed)
    binned = bin_tile(data, method.bin_um)
    patches = _patches_for(
        binned, data, np.arange(1, args.cells + 1), config.cells.ucs.patch_px, None
    )
    n_tx_patches = sum(len(p.rows) for p in patches)

    t0 = time.perf_counter()
    state = train_ucs(patches, args.genes, config.cells.ucs)
    t_train = time.perf_counter() - t0
    method.load(
        {
            "train": state,
            "bin_um": method.bin_um,
            "hvg": None,
            "region_um": 1000.0,
            "gene_freq": (np.bincount(data.transcripts.gene, minlength=args.genes) + 1.0)
            / (len(data.transcripts) + args.genes),
        }
    )
    t0 = time.perf_counter()
    cells = method.segment(data).labels
    t_inf = time.perf_counter() - t0

    px_train = len(patches) * config.cells.ucs.patch_px**2 * args.epochs
    row = {
        "device": str(method.device),
        "threads": args.threads,
        "tile_px": args.size_px,
        "n_train_patches": len(patches),
        "epochs": args.epochs,
        "train_s": round(t_train, 3),
        "train_pixels_per_s": round(px_train / t_train),
        "train_transcripts_per_s": round(n_tx_patches * args.epochs / t_train),
        "infer_s": round(t_inf, 3),
        "infer_pixels_per_s": round(args.size_px**2 / t_inf),
        "infer_transcripts_per_s": round(len(data.transcripts) / t_inf),
        "n_cells_out": int(len(np.unique(cells)) - 1),
    }
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
