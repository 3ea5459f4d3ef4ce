"""``stseg``: the command line. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import redact
from .errors import ConfigError, RunIncompleteError, StsegError

EXIT_INCOMPLETE = 3
# what `stseg batch` returns; a RayJob retries only what re-running can fix (docs/cluster.md)
BATCH_EXIT_CODES = """exit codes:
  0  every slide complete (or skipped: already complete)
  1  the batch itself crashed (an error outside a slide, or a slide lost to the cluster losing a
     node, worker or actor: failure "cluster" in OUT/status.json); a re-run resumes
  2  bad manifest or config: nothing ran
  3  some slides failed, each recorded in OUT/status.json and OUT/summary.csv, the others
     complete (--failed-slides-exit-code changes this code; a RayJob passes 0 so that a bad slide
     does not make KubeRay rebuild the cluster)"""


def _config(args, hints: dict | None = None):
    """The pipeline config; reader ``hints`` apply only when no --config file is given, under
    --set.
    """
    from .config import _merge, load_config, parse_set

    overrides = parse_set(getattr(args, "set", None))
    if hints and not getattr(args, "config", None):
        overrides = _merge(hints, overrides)
    return load_config(getattr(args, "config", None), overrides)


def _reader_options(args) -> dict:
    from .io.options import parse_reader_options

    return parse_reader_options(getattr(args, "reader_option", None))


def cmd_run(args) -> int:
    from .driver import run_pipeline
    from .io import storage
    from .outfolder import guarded_output
    from .runlock import hold

    if bool(args.chip) == bool(args.input):
        raise SystemExit("stseg run: give exactly one of --chip CHIP or --input BUNDLE")

    def config(hints: dict):  # a bundle's reader hints apply under --set, without --config
        cfg = _config(args, hints)
        cfg.runtime.fail_fast = cfg.runtime.fail_fast or args.fail_fast
        cfg.runtime.progress = cfg.runtime.progress and not args.no_progress
        return cfg

    out = storage.absolute(args.out)
    # a folder the run finds neither empty nor a stseg run is refused; one it made and leaves
    # without a file (bad input, bad config) is removed
    with guarded_output(out, overwrite=args.overwrite), hold(out):
        # the conversion into OUT/_work (run_pipeline's) and the report are this run's
        t0 = time.perf_counter()
        summary = run_pipeline(
            args.chip,
            out,
            config,
            input=args.input,
            platform=args.platform,
            reader_options=_reader_options(args) if args.input else None,
            address=args.address,
            local=args.local,
            overwrite=args.overwrite,
            spatialdata=not args.no_spatialdata and _spatialdata_possible(out),
        )
        _print_summary(summary, time.perf_counter() - t0)
        _report(out, args.ref)
        _spatialdata_written(out)
    return 0


def _spatialdata_possible(out: str) -> bool:
    """Whether the run can write OUT/spatialdata.zarr (its last stage); says why not."""
    from .driver import spatialdata_unavailable

    why = spatialdata_unavailable(out)
    if why:
        print(why, file=sys.stderr)
    return why is None


def _spatialdata_written(out: str) -> None:
    from .io import storage
    from .outputs import SPATIALDATA_ZARR

    path = storage.join(out, SPATIALDATA_ZARR)
    if storage.exists(path):
        print(f"spatialdata: {path}", file=sys.stderr)


def _report(out: str, ref: str | None) -> None:
    from .report import write_report

    path = write_report(out, ref=ref)
    print(f"report: {path}", file=sys.stderr)


def _print_summary(summary: dict, seconds: float) -> None:
    c = summary["counts"]
    rate = c["n_transcripts"] / seconds if seconds > 0 else float("nan")
    print(
        f"{summary['status']}: {c['n_cells']} cells, {c['n_assigned']}/{c['n_transcripts']} "
        "transcripts "
        f"assigned, {summary['n_tiles']} tiles, {seconds:.1f} s ({rate:,.0f} transcripts/s) -> "
        f"{summary['out']}"
    )


def cmd_synth(args) -> int:
    from .synth import HARD, synth_chip

    if args.source is not None:
        return _synth_from(args)
    transform = None
    if args.stain_transform is not None:
        try:
            transform = json.loads(args.stain_transform)
        except ValueError as exc:
            raise ConfigError(
                f"--stain-transform is not JSON: {args.stain_transform!r} ({exc})"
            ) from exc
        if not isinstance(transform, dict):
            raise ConfigError(
                f"--stain-transform must be a JSON object, got {args.stain_transform!r}"
            )
    info = synth_chip(
        args.out,
        args.width_um,
        args.height_um,
        args.seed,
        pixel_size_um=args.pixel_size_um,
        membrane=args.membrane,
        vendor_nuclei=args.vendor_nuclei,
        overwrite=args.overwrite,
        track_lines=args.track_lines,
        stain_transform=transform,
        **(HARD if args.hard else {}),
    )
    print(json.dumps(info, indent=2, default=str))
    return 0


def _synth_from(args) -> int:
    from .synth_from import synth_from

    generator_only = {
        "--seed": args.seed != 0,
        "--pixel-size-um": args.pixel_size_um != 0.5,
        "--membrane": args.membrane,
        "--vendor-nuclei": args.vendor_nuclei,
        "--track-lines": args.track_lines,
        "--stain-transform": args.stain_transform is not None,
        "--hard": args.hard,
    }
    given = [k for k, v in generator_only.items() if v]
    if given:
        raise ConfigError(
            f"stseg synth --from tiles a real crop; {', '.join(given)} only apply to generated "
            "chips"
        )
    info = synth_from(
        args.source, args.out, args.width_um, args.height_um, overwrite=args.overwrite
    )
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_demo(args) -> int:
    from .config import load_config, parse_set
    from .driver import run_pipeline
    from .io import storage
    from .synth import synth_chip

    chip = storage.join(args.out, "chip")
    t0 = time.perf_counter()
    info = synth_chip(chip, args.size_um, args.size_um, args.seed, overwrite=True)
    print(
        f"generated chip {chip}: {info['n_cells']} cells, {info['n_transcripts']} transcripts",
        file=sys.stderr,
    )
    # Small tiles, so that even the demo chip is spread over many tiles and Ray workers.
    config = load_config(
        args.config, {**parse_set(["tiling.tile_size_um=150"]), **parse_set(args.set)}
    )
    out = storage.join(args.out, "run")
    summary = run_pipeline(
        chip, out, config, address=args.address, spatialdata=_spatialdata_possible(out)
    )
    _print_summary(summary, time.perf_counter() - t0)
    _report(out, chip)
    _spatialdata_written(out)
    from .evaluation import evaluate, format_table

    print(format_table(evaluate(out, chip)))
    return 0


def cmd_convert(args) -> int:
    from .io.bundles import convert_bundle

    report = convert_bundle(
        args.input, args.out, args.platform, options=_reader_options(args), overwrite=args.overwrite
    )
    print(json.dumps(redact.redact(report), indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate, format_table
    from .evaluation.nuclei import format_nucleus_metrics

    metrics = evaluate(
        args.pred,
        args.ref,
        markers=args.markers,
        nuclei_ref=args.nuclei_ref,
        pairs_file=args.pairs,
        chip=args.chip,
    )
    free = {
        k: v for k, v in metrics["reference_free"].items() if k != "gene_pairs"
    }  # pairs: in --json
    print(format_table({**metrics, "reference_free": free}))
    if metrics.get("nuclei"):
        print(format_nucleus_metrics(metrics["nuclei"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(metrics, fh, indent=2, default=float)
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    print(
        export_run(
            args.run,
            args.to,
            out=args.out,
            chip=args.chip,
            overwrite=args.overwrite,
            table=args.table,
        )
    )
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args)


def cmd_batch(args) -> int:
    from .batch import parse_manifest, run_batch

    if args.check:
        m = parse_manifest(args.manifest)
        print(f"{args.manifest}: {len(m.slides)} slide(s), out {redact.scrub(m.out)}: valid")
        return 0
    summary = run_batch(args.manifest, address=args.address, local=args.local)
    rows = summary["slides"]
    failed = [r for r in rows if r["status"] not in ("complete", "skipped")]
    done = {s: sum(r["status"] == s for r in rows) for s in ("complete", "skipped")}
    print(
        f"stseg batch: {done['complete']} complete, {done['skipped']} skipped, "
        f"{len(failed)} failed of {len(rows)} slides (OUT/status.json, OUT/summary.csv in "
        f"{redact.scrub(summary['out'])})"
        + "".join(
            f"\n  {r['slide']}: {r['status']} ({r.get('failure')}): {r['error']}" for r in failed
        )
    )
    if summary["cluster_failures"]:
        print(
            f"stseg batch: {summary['cluster_failures']} slide(s) lost to the cluster; exit 1 so "
            "that a retry (RayJob backoffLimit) resumes them",
            file=sys.stderr,
        )
        return 1
    return args.failed_slides_exit_code if failed else 0


def _with_reader_options(format_help):
    def fmt() -> str:
        from .io.bundles import options_help

        return format_help() + "\n" + options_help()

    return fmt


def _version() -> str:
    """The installed distribution's version (as run.json records it), else the source's."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        return version("stseg-dist")
    except PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stseg", description="Ray-distributed cell segmentation for spatial transcriptomics"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("--version", action="version", version=f"stseg {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--config", help="pipeline config YAML (local path or URL); see configs/")
        sp.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. cells.method=ucs",
        )
        sp.add_argument(
            "--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded Ray)"
        )

    def reader_option(sp):
        sp.add_argument(
            "--reader-option",
            action="append",
            metavar="KEY=VALUE",
            help="reader option (repeatable; VALUE parsed as JSON when it parses), "
            "e.g. min_qv=30 or image_bounds_um=[0,0,500,450]; see stseg convert --help",
        )

    r = sub.add_parser("run", help="segment a chip and write labels, cells, transcripts, AnnData")
    r.add_argument(
        "--chip", help="canonical chip folder or URL (chip.json + image.zarr + transcripts.parquet)"
    )
    r.add_argument("--input", help="a vendor bundle folder or URL, converted on the fly")
    r.add_argument(
        "--platform",
        default="auto",
        help="xenium|merscope|cosmx|stereoseq|generic|auto (with --input)",
    )
    reader_option(r)
    r.add_argument("--out", required=True, help="output folder or URL")
    r.add_argument(
        "--ref", help="reference for the report's metrics (e.g. a generated chip with truth/)"
    )
    r.add_argument(
        "--local", action="store_true", help="run in this process without Ray (debugging)"
    )
    r.add_argument(
        "--fail-fast", action="store_true", help="stop at the first tile that fails every retry"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty OUT that is not a stseg run (its files are kept)",
    )
    r.add_argument(
        "--no-spatialdata",
        action="store_true",
        help="do not write OUT/spatialdata.zarr (written when the spatialdata extra is installed)",
    )
    common(r)
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser(
        "synth",
        help="write a generated chip with ground truth, or (--from) a slide tiled from a real crop",
    )
    s.add_argument("--out", required=True, help="output chip folder or URL")
    s.add_argument(
        "--from",
        dest="source",
        metavar="BUNDLE_OR_CHIP",
        help="tile this real crop (a chip, or a vendor bundle with an image) into a slide of "
        "--width-um x --height-um, alternate copies mirrored, vendor references renumbered per "
        "copy",
    )
    s.add_argument("--width-um", type=float, required=True, help="chip width in µm")
    s.add_argument("--height-um", type=float, required=True, help="chip height in µm")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--pixel-size-um", type=float, default=0.5, help="image pixel size in µm")
    s.add_argument("--membrane", action="store_true", help="add a membrane stain channel")
    s.add_argument("--vendor-nuclei", action="store_true", help="also write nuclei.zarr")
    s.add_argument(
        "--track-lines",
        action="store_true",
        help="draw Stereo-seq track lines in the expression and the membrane stain",
    )
    s.add_argument(
        "--stain-transform",
        metavar="JSON",
        help="write the membrane stain moved, e.g. "
        '\'{"rotation_deg": 90, "flip": true, "scale": 1.05, '
        '"shift_um": [4, -6]}\' (needs --membrane; registration: track_lines undoes it)',
    )
    s.add_argument(
        "--hard",
        action="store_true",
        help="tissue closer to real: gaps, uneven expression, sparse cytoplasm, more free RNA",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing chip")
    s.set_defaults(fn=cmd_synth)

    d = sub.add_parser("demo", help="generate a small chip and run the whole pipeline on it")
    d.add_argument("--out", default="demo-out", help="demo folder (chip/ and run/ inside)")
    d.add_argument("--size-um", type=float, default=600.0, help="chip width and height in µm")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    common(d)
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("convert", help="convert a vendor bundle to a canonical chip")
    reader_option(c)
    c.format_help = _with_reader_options(
        c.format_help
    )  # built on --help only: it imports every reader
    c.add_argument("--input", required=True, help="bundle folder or URL")
    c.add_argument(
        "--platform", default="auto", help="xenium|merscope|cosmx|stereoseq|generic|auto"
    )
    c.add_argument("--out", required=True, help="output chip folder or URL")
    c.add_argument("--overwrite", action="store_true", help="replace an existing chip")
    c.set_defaults(fn=cmd_convert)

    e = sub.add_parser("eval", help="score a run, against a reference if given")
    e.add_argument("--pred", required=True, help="run output folder")
    e.add_argument(
        "--ref",
        help="reference: generated chip, label mask or transcript table (without one: the "
        "reference-free metrics, MECR, nucleus-cytoplasm r and assigned share)",
    )
    e.add_argument(
        "--markers",
        help="cell type marker table (cell_type, gene) for MECR's gene pairs "
        "(default: one pair set per chip, from its vendor nuclei or its transcripts; see --pairs)",
    )
    e.add_argument(
        "--pairs",
        help="MECR gene pair table (columns gene_a, gene_b): one ruler for every run compared",
    )
    e.add_argument(
        "--chip", help="the run's chip, for MECR's gene pairs (default: the chip in run.json)"
    )
    e.add_argument(
        "--nuclei-ref",
        help="reference nuclei: a label mask (.tif/.zarr), nucleus polygons in µm "
        "(GeoParquet, or a "
        "cell_id/vertex_x/vertex_y table such as Xenium nucleus_boundaries.parquet), a chip "
        "folder, or TABLE.parquet#COLUMN with per-transcript flags (default: the nuclei the --ref "
        "chip or the run's chip carries; flags: overlaps_nucleus/CellComp in the run's "
        "transcripts)",
    )
    e.add_argument("--json", help="also write the metrics as JSON here")
    e.set_defaults(fn=cmd_eval)

    x = sub.add_parser(
        "export", help="export a finished run for SpatialData or the Xenium Explorer"
    )
    x.add_argument("run", help="finished run folder (local)")
    x.add_argument(
        "--to", required=True, choices=["spatialdata", "xenium-explorer"], help="export format"
    )
    x.add_argument(
        "--out", help="output path (default RUN/spatialdata.zarr or RUN/xenium_explorer)"
    )
    x.add_argument(
        "--chip", help="the run's chip, for the image (default: the chip named in run.json)"
    )
    x.add_argument(
        "--table",
        help="xenium-explorer: an annotated .h5ad of the run's cells (e.g. after clustering); "
        "every categorical obs column becomes a cell group",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing export")
    x.set_defaults(fn=cmd_export)

    b = sub.add_parser("bench", help="benchmarks (see stseg bench -- --help)")
    b.add_argument(
        "bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark harness"
    )
    b.set_defaults(fn=cmd_bench)

    m = sub.add_parser(
        "batch",
        help="segment many slides listed in a manifest on one Ray cluster",
        epilog=BATCH_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("manifest", help="batch manifest YAML (or CSV)")
    m.add_argument("--address", help="Ray cluster address")
    m.add_argument(
        "--local", action="store_true", help="run in this process without Ray (debugging)"
    )
    m.add_argument(
        "--check",
        action="store_true",
        help="validate the manifest (keys, platforms, every slide's config) and exit",
    )
    m.add_argument(
        "--failed-slides-exit-code",
        type=int,
        default=EXIT_INCOMPLETE,
        metavar="N",
        help=f"exit code when some slides failed, each recorded (default {EXIT_INCOMPLETE})",
    )
    m.set_defaults(fn=cmd_batch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    redact.register()  # credential-like environment variables
    redact.install_log_filter()
    try:
        return args.fn(args)
    except RunIncompleteError as exc:
        print(f"stseg: incomplete: {redact.scrub(str(exc))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except StsegError as exc:
        print(f"stseg: error: {redact.scrub(str(exc))}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the traceback, with credentials masked
        import traceback

        print(redact.scrub(traceback.format_exc()), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
