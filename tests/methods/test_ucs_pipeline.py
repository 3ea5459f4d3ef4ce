"""UCS through the whole pipeline on a generated chip: tile invariance, the accounting invariants
of every method, and cells whose nucleus the stain does not show found all the same.
"""

import json

import pandas as pd
import pytest

from stseg_dist.bench.comparison import missing_cell_recall
from stseg_dist.synth import synth_chip
from tests.conftest import one_tile_vs_many

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: Tile invariance tolerance for UCS: the networks run on differently sized windows, where float
#: summation order may differ in the last bits, so a few bins on exact ties may flip.
UCS_TILE_TOLERANCE = 1e-4  # measured 0

#: Of the generated chip's cells with no visible nucleus, the share missing-cell detection must
#: recover (IoU >= 0.5 with the true cell); measured 0.69 (9 of 13) on the chip below.
MIN_MISSING_CELL_RECALL = 0.2

FAST = [
    "cells.method=ucs",
    "cells.ucs.n_train_patches=48",
    "cells.ucs.epochs=4",
    "runtime.progress=false",
]


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    out = tmp_path_factory.mktemp("ucs") / "chip"
    synth_chip(str(out), 200, 160, seed=4)
    return str(out)


def test_ucs_tile_invariance_and_accounting(chip, tmp_path, ray_module):
    one, many, (a, na), (b, nb) = one_tile_vs_many(chip, tmp_path, FAST, tile_um=48)
    assert one["n_tiles"] == 1 and many["n_tiles"] >= 12
    differ = (a != b).mean()
    print(f"UCS labels differing between 1 tile and {many['n_tiles']} tiles: {differ:.5f}")
    assert differ <= UCS_TILE_TOLERANCE
    # classical nuclei: identical whatever the tiling
    assert (na != nb).sum() == 0 and one["counts"]["n_nuclei"] == many["counts"]["n_nuclei"]
    tx = pd.read_parquet(tmp_path / "many" / "transcripts.parquet")
    assert sorted(tx.input_row) == list(range(many["counts"]["n_transcripts_input"]))
    cells = pd.read_parquet(tmp_path / "many" / "cells.parquet")
    run = json.loads((tmp_path / "many" / "run.json").read_text())
    # seeds of nucleus-less cells become cells flagged has_nucleus = False
    assert (~cells.has_nucleus).sum() == run["counts"]["n_seeds"]
    assert (cells.cell_id[~cells.has_nucleus] > run["counts"]["n_nuclei"]).all()
    assert ((nb == 0) | (b == nb)).all()  # nuclei always kept by their cell
    # run.json records the training: one loss per epoch for each network, on the patches sampled
    trained = run["method"]
    assert trained["name"] == "ucs" and trained["n_train_patches"] == 48
    assert len(trained["loss"]["foreground"]) == len(trained["loss"]["cell"]) == 4


def test_missing_cells_are_found(tmp_path):
    """With the default training, cells whose nucleus the stain does not show are found as cells
    of their own (this chip has 13 of 331), without flooding the chip with false ones (31 seeds
    measured: about 1 in 20 cells is a seed, a true cell or part of one).
    """
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline

    chip = str(tmp_path / "chip")
    info = synth_chip(chip, 300, 300, seed=1)
    cfg = load_config(
        overrides=parse_set(["cells.method=ucs", "runtime.progress=false"]), use_env=False
    )
    summary = run_pipeline(chip, str(tmp_path / "out"), cfg, local=True)
    recall = missing_cell_recall(chip, str(tmp_path / "out"))
    n_seeds = summary["counts"]["n_seeds"]
    print(
        f"missing-cell recall {recall:.3f} with {n_seeds} seeds for {info['n_missing_nucleus']} "
        "hidden nuclei"
    )
    assert recall >= MIN_MISSING_CELL_RECALL
    assert n_seeds <= 3 * info["n_missing_nucleus"]  # measured 21-31 seeds: some cells split in two


@pytest.mark.parametrize(
    "rule",
    [
        ["cells.spillover.rule=ratio"],
        # significance 1: the fitted decay moves transcripts whatever its test says
        ["cells.spillover.rule=diffusion", "cells.spillover.significance=1"],
        # the ratio rule behind its chip-wide gate (open on this chip's imperfect borders)
        ["cells.spillover.gate=decay"],
    ],
    ids=["ratio", "diffusion", "ratio-gated"],
)
def test_coverage_knob_and_spillover_are_tile_exact(chip, tmp_path, rule):
    """cells.ucs.coverage (the chip-wide distance histogram, the relaxed gate, the fill of cut-off
    pieces) and the spillover pass (either rule; the diffusion rule's chip-wide model with the
    seeds among its compartments) give the same cells and assignments at any tiling (in-process
    runs: the same kernels as on Ray, see test_pipeline.py).
    """
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.driver import run_pipeline

    items = [*FAST, "cells.ucs.coverage=0.99", "cells.spillover.enabled=true", *rule]
    runs = {}
    for name, tile_um in (("one", 1000), ("many", 48)):
        cfg = load_config(
            overrides=parse_set([*items, f"tiling.tile_size_um={tile_um}", "tiling.chunk_px=32"]),
            use_env=False,
        )
        runs[name] = run_pipeline(chip, str(tmp_path / name), cfg, local=True)
    assert runs["one"]["n_tiles"] == 1 and runs["many"]["n_tiles"] >= 12
    ta = pd.read_parquet(tmp_path / "one" / "transcripts.parquet").sort_values("input_row")
    tb = pd.read_parquet(tmp_path / "many" / "transcripts.parquet").sort_values("input_row")
    assert (ta.cell_id.to_numpy() != tb.cell_id.to_numpy()).mean() <= UCS_TILE_TOLERANCE
    moved = [runs[k]["counts"]["n_spillover_moved"] for k in ("one", "many")]
    assert moved[0] == moved[1] > 0
    assert runs["one"].get("spillover") == runs["many"].get("spillover")
    run = json.loads((tmp_path / "one" / "run.json").read_text())
    assert run["method"]["growth_um"] > 0
