"""The spillover pass: which transcripts move, that it is tile-exact, and its bad settings."""

import json

import numpy as np
import pandas as pd
import pytest

from stseg_dist.config import load_config, parse_set
from stseg_dist.errors import ConfigError
from stseg_dist.spillover import SpilloverConfig, reassign


def test_a_neighbours_gene_near_the_border_moves_to_it():
    """Cells 1 (left, nucleus of gene 0) and 2 (right, nucleus of gene 1) meet at column 10."""
    labels = np.zeros((10, 20), np.uint32)
    labels[:, :10], labels[:, 10:] = 1, 2
    nuclei = np.zeros_like(labels)
    nuclei[3:7, 2:5], nuclei[3:7, 15:18] = 1, 2
    rows = [4] * 8 + [5, 5, 5, 5]
    cols = [3] * 4 + [16] * 4 + [9, 9, 3, 1]
    genes = [0] * 4 + [1] * 4 + [1, 0, 1, 1]
    # gene 1 at the border in cell 1: moves; gene 0 there: stays; gene 1 on cell 1's own
    # nucleus: stays; gene 1 far from cell 2 (column 1, 8 px away): stays
    cell = labels[rows, cols].astype(np.int64)

    def run(min_ratio):
        cfg = SpilloverConfig(enabled=True, reach_um=1.0, min_ratio=min_ratio, prior_counts=1.0)
        args = (np.array(rows), np.array(cols), np.array(genes), cell, 2, 0.5, cfg, 1.0)
        return reassign(labels, nuclei, None, *args)

    got, moved = run(3.0)
    assert moved.tolist() == [False] * 8 + [True, False, False, False]
    assert got[8] == 2 and (got[9:] == 1).all()
    # a stricter ratio keeps it: 1 / (4 + 1) pseudo-count vs (4 + 0.5) / 5: a ratio of 9
    assert not run(10.0)[1].any()


def test_every_cell_within_reach_competes_and_the_best_fit_wins():
    """Cell 5 holds a transcript of gene 2 at its border; cells 3 (gene 1) and 9 (gene 0) lie
    beside it, and cell 4 (gene 2) within reach too: the middle ID, which a max/min search of the
    neighbourhood misses, takes it. Beyond the reach it stays.
    """
    labels = np.zeros((12, 12), np.uint32)
    labels[:6, :6], labels[:6, 6:], labels[6:, :6], labels[6:, 6:] = 5, 3, 9, 4
    nuclei = np.zeros_like(labels)
    for cid, (r, c) in {5: (1, 1), 3: (1, 9), 9: (9, 1), 4: (9, 9)}.items():
        nuclei[r : r + 2, c : c + 2] = cid
    gene_of = {5: 3, 3: 1, 9: 0, 4: 2}
    rows, cols, genes = [], [], []
    for cid, gene in gene_of.items():  # four nuclear transcripts each
        r, c = np.argwhere(nuclei == cid)[0]
        rows += [r] * 4
        cols += [c] * 4
        genes += [gene] * 4
    rows, cols, genes = rows + [5], cols + [5], genes + [2]
    rows, cols, genes = np.array(rows), np.array(cols), np.array(genes)
    cell = labels[rows, cols].astype(np.int64)
    cfg = SpilloverConfig(enabled=True, min_ratio=3.0, prior_counts=1.0)
    got, moved = reassign(labels, nuclei, None, rows, cols, genes, cell, 4, 1.0, cfg, 2.0)
    assert moved.tolist() == [False] * 16 + [True] and got[-1] == 4
    # 4 lies sqrt(2) px from the transcript: a reach of 1 px leaves it where it is
    assert not reassign(labels, nuclei, None, rows, cols, genes, cell, 4, 1.0, cfg, 1.0)[1].any()


def test_a_transcript_that_fits_no_cell_goes_to_background_only_when_asked():
    """One cell whose nucleus holds gene 0 only; a gene-1 transcript in its cytoplasm, with no
    neighbour, goes to background with ``background_ratio`` and stays without it.
    """
    labels = np.ones((8, 8), np.uint32)
    nuclei = np.zeros_like(labels)
    nuclei[2:5, 2:5] = 1
    rows, cols, genes = np.array([3] * 20 + [7]), np.array([3] * 20 + [7]), np.array([0] * 20 + [1])
    cell = np.ones(21, np.int64)
    # own cell: (0 + 1/10) / (20 + 1) of gene 1 against uniform 1/10: 21 times worse
    plain = SpilloverConfig(enabled=True, prior_counts=1.0)
    assert not reassign(labels, nuclei, None, rows, cols, genes, cell, 10, 1.0, plain, 2.0)[1].any()
    strict = SpilloverConfig(enabled=True, prior_counts=1.0, background_ratio=10.0)
    got, moved = reassign(labels, nuclei, None, rows, cols, genes, cell, 10, 1.0, strict, 2.0)
    assert moved.tolist() == [False] * 20 + [True] and got[-1] == 0 and (got[:20] == 1).all()
    loose = SpilloverConfig(enabled=True, prior_counts=1.0, background_ratio=30.0)
    assert not reassign(labels, nuclei, None, rows, cols, genes, cell, 10, 1.0, loose, 2.0)[1].any()


@pytest.mark.parametrize(
    "items, on",
    [
        ([], False),
        (["cells.method=ucs"], False),
        (["cells.method=ucs", "cells.ucs.coverage=0.95"], True),
        (["cells.method=ucs", "cells.ucs.coverage=0.95", "cells.spillover.enabled=false"], False),
        (["cells.spillover.enabled=true"], True),
    ],
)
def test_the_pass_is_on_by_default_only_with_the_ucs_coverage_knob(items, on):
    cfg = load_config(overrides=parse_set(items), use_env=False)
    cfg.validate()
    assert cfg.cells.spillover.active(cfg) is on


def test_the_reach_defaults_to_the_nucleus_diameter():
    cfg = load_config(
        overrides=parse_set(["cells.spillover.enabled=true", "nuclei.diameter_um=7"]),
        use_env=False,
    )
    assert cfg.cells.spillover.reach(cfg) == 7.0


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("cells.spillover.reach_um=0", "reach_um must be positive"),
        ("cells.spillover.reach_um=30", "must not exceed nuclei.diameter_um"),
        ("cells.spillover.min_ratio=0.5", "min_ratio must be at least 1"),
        ("cells.spillover.prior_counts=0", "prior_counts must be positive"),
        ("cells.spillover.background_ratio=0.5", "background_ratio must be at least 1"),
        ("cells.spillover.rule=bayes", "cells.spillover.rule must be one of ratio, diffusion"),
        ("cells.spillover.significance=0", r"cells.spillover.significance must be in \(0, 1\]"),
        ("cells.spillover.significance=1.5", r"cells.spillover.significance must be in"),
        ("cells.spillover.max_types=0", "cells.spillover.max_types must be at least 1"),
        ("cells.spillover.gate=always", "cells.spillover.gate must be one of none, decay, got"),
        ("cells.spillover.max_types=2.5", "'cells.spillover.max_types' must be an integer"),
    ],
)
def test_bad_spillover_settings(item, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(
            overrides=parse_set(["cells.spillover.enabled=true", item]), use_env=False
        ).validate()


@pytest.mark.parametrize("item", ["rule=diffusion", "gate=decay"])
def test_the_chip_wide_models_refuse_a_halo_too_small_for_their_pseudo_cells(item):
    items = ["cells.spillover.enabled=true", f"cells.spillover.{item}", "tiling.halo_um=10"]
    key = item.replace("=", " ")
    with pytest.raises(ConfigError, match=f"cells.spillover.{key} needs a halo"):
        load_config(overrides=parse_set(items), use_env=False).validate()


@pytest.mark.parametrize(
    "rule",
    [
        ["cells.spillover.rule=ratio"],
        # significance 1: the fitted decay moves transcripts whatever its test says
        ["cells.spillover.rule=diffusion", "cells.spillover.significance=1"],
        # the generated chip's borders are imperfect: the ratio's passing share decays
        ["cells.spillover.gate=decay"],
    ],
    ids=["ratio", "diffusion", "ratio-gated"],
)
def test_spillover_is_tile_exact_and_counted(tmp_path, rule):
    """Expansion + spillover on a generated chip with cell types: the same transcripts move at
    every tiling, run.json counts them, and the cells' counts follow the moves. The diffusion
    rule's chip-wide model (types, decay) is the same at every tiling too.
    """
    from stseg_dist.synth import synth_chip
    from tests.test_tile_invariance import _same_at_every_tiling

    chip = str(tmp_path / "chip")
    synth_chip(chip, 100, 100, seed=5, vendor_nuclei=True)
    one = _same_at_every_tiling(
        chip, tmp_path, [24, 44], "nuclei.backend=vendor", "cells.spillover.enabled=true", *rule
    )
    tx = pd.read_parquet(one / "transcripts.parquet")
    n_moved = int(tx.spillover_moved.sum())
    assert n_moved > 0
    run = json.loads((one / "run.json").read_text())
    assert run["counts"]["n_spillover_moved"] == n_moved
    models = [
        json.loads((tmp_path / d / "run.json").read_text()).get("spillover")
        for d in ("one", "t24", "t44")
    ]
    assert models[0] == models[1] == models[2]
    if "cells.spillover.rule=diffusion" in rule:
        assert models[0]["n_types"] > 1 and models[0]["amplitude"] > 0
    if "cells.spillover.gate=decay" in rule:
        assert models[0]["open"] and models[0]["n_pairs"] > 0
    cells = pd.read_parquet(one / "cells.parquet").set_index("cell_id")
    per_cell = tx[tx.cell_id > 0].groupby("cell_id").size()
    assert (cells.n_transcripts.reindex(per_cell.index) == per_cell).all()


# -- gate: decay -------------------------------------------------------------------------------
def test_the_gate_fits_a_decaying_share_and_shuts_on_a_flat_one():
    from stseg_dist.spillover import fit_gate

    rng = np.random.default_rng(2)
    px, n_d = 0.25, 33
    d = np.arange(n_d) * px
    pairs = rng.multinomial(40000, np.full(n_d, 1.0 / n_d))

    def hist(share):
        win = rng.binomial(pairs, share)
        return np.stack([pairs - win, win], 1)

    gate = fit_gate(hist(0.05 + 0.2 * np.exp(-d / 1.5)), px, 8.0, 0.001)
    assert gate.open and abs(gate.amplitude - 0.2) < 0.04 and abs(gate.scale_um - 1.5) < 0.5
    flat = fit_gate(hist(np.full(n_d, 0.1)), px, 8.0, 0.001)
    assert not flat.open and flat.amplitude == 0.0 and abs(flat.baseline - 0.1) < 0.01
    assert fit_gate(np.zeros((n_d, 2)), px, 8.0, 0.001).open is False


def test_the_gate_shuts_the_ratio_rule_on_a_chip_with_no_leakage(tmp_path):
    """Genes shuffled over the generated chip's transcripts: no cell's expression differs from
    another's, so whatever the ratio rule moves is noise. Ungated it moves some; the gate finds
    no decay and moves nothing.
    """
    from stseg_dist.driver import run_pipeline
    from stseg_dist.synth import synth_chip

    chip = str(tmp_path / "chip")
    synth_chip(chip, 100, 100, seed=5, vendor_nuclei=True)
    tx = pd.read_parquet(f"{chip}/transcripts.parquet")
    tx["gene"] = tx["gene"].to_numpy()[np.random.default_rng(0).permutation(len(tx))]
    tx.to_parquet(f"{chip}/transcripts.parquet", index=False)
    moved = {}
    for gate in ("none", "decay"):
        items = ["runtime.progress=false", "nuclei.backend=vendor", "cells.spillover.enabled=true"]
        cfg = load_config(
            overrides=parse_set([*items, f"cells.spillover.gate={gate}"]), use_env=False
        )
        run_pipeline(chip, str(tmp_path / gate), cfg, local=True)
        run = json.loads((tmp_path / gate / "run.json").read_text())
        moved[gate] = run["counts"]["n_spillover_moved"]
    assert moved["none"] > 0
    assert moved["decay"] == 0
    assert run["spillover"]["open"] is False and run["spillover"]["n_pairs"] > 0


# -- rule: diffusion ---------------------------------------------------------------------------
def _two_types(n_per_type=30, depth=40, seed=0):
    """Counts of nuclei of two types: type 0 expresses genes 0-4, type 1 genes 5-9."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows = []
    for kind in (0, 1):
        p = np.full(10, 0.02)
        p[kind * 5 : kind * 5 + 5] = 0.18
        rows += [rng.multinomial(depth, p / p.sum()) for _ in range(n_per_type)]
    return np.arange(1, 2 * n_per_type + 1), sp.csr_matrix(np.array(rows))


def test_the_types_are_as_many_as_bic_supports():
    from stseg_dist.spillover import fit_types

    ids, counts = _two_types()
    state = fit_types(ids, counts, 6)
    assert state.n_types == 2
    kinds = state.weights.argmax(1)
    assert len(set(kinds[:30])) == 1 and len(set(kinds[30:])) == 1 and kinds[0] != kinds[30]
    # one type's nuclei only: one type, so every likelihood ratio is 1 and nothing can move
    one = fit_types(ids[:30], counts[:30], 6)
    assert one.n_types == 1
    assert np.allclose(one.log_p(ids[:3], np.array([0, 5, 9])), one.log_p(ids[3:6], [0, 5, 9]))


def _pairs_histogram(share_at, n=40000, px=0.25, reach=8.0, seed=1):
    """Pairs at distances uniform in [0, reach], neighbour-born with probability share_at(d);
    a neighbour-born pair's log likelihood ratio is drawn from N(+2, 2^2), another's from
    N(-2, 2^2): then the value drawn is that pair's true log likelihood ratio.
    """
    from stseg_dist.spillover import LR_EDGES

    rng = np.random.default_rng(seed)
    d = rng.uniform(0, reach, n)
    born = rng.random(n) < share_at(d)
    lr = np.where(born, 2.0, -2.0) + rng.normal(0, 2.0, n)
    n_d = int(np.ceil(reach / px)) + 1
    hist = np.zeros((n_d, len(LR_EDGES)), np.int64)
    lr_bin = np.clip(np.round((lr - LR_EDGES[0]) / 0.1).astype(int), 0, len(LR_EDGES) - 1)
    np.add.at(hist, (np.minimum(np.round(d / px).astype(int), n_d - 1), lr_bin), 1)
    return hist


def test_the_decay_is_fitted_and_a_flat_share_moves_nothing():
    from stseg_dist.spillover import fit_decay

    hist = _pairs_histogram(lambda d: 0.1 + 0.4 * np.exp(-d / 1.5))
    c, s, scale, lrt = fit_decay(hist, 0.25, 8.0, 0.001)
    assert abs(c - 0.1) < 0.03 and abs(s - 0.4) < 0.08 and abs(scale - 1.5) < 0.4 and lrt > 100
    flat = _pairs_histogram(lambda d: np.full_like(d, 0.2))
    c, s, _, lrt = fit_decay(flat, 0.25, 8.0, 0.001)
    assert s == 0.0 and abs(c - 0.2) < 0.03 and lrt < 13.8
    # significance 1 keeps whatever was fitted
    assert fit_decay(flat, 0.25, 8.0, 1.0)[1] >= 0.0


def _toy_state(amplitude, scale_um=1.0):
    """Two cells (IDs 1, 2) of two types: type 0 expresses gene 0, type 1 gene 1."""
    from stseg_dist.spillover import DiffusionState

    prof = np.log(np.array([[0.9, 0.1], [0.1, 0.9]]))
    return DiffusionState(
        np.array([1, 2]), np.eye(2), prof, np.array([0.5, 0.5]), 0.1, amplitude, scale_um
    )


def test_the_diffusion_rule_moves_by_the_posterior():
    """Cells 1 (columns 0-9) and 2 (10-19), 0.5 µm pixels: a gene-1 transcript in cell 1 beside
    the border moves to 2 (prior 0.4 x 9 > 0.6 x 1), one 2 µm away stays (0.4 e^-2 x 9 < 1).
    """
    labels = np.zeros((10, 20), np.uint32)
    labels[:, :10], labels[:, 10:] = 1, 2
    nuclei = np.zeros_like(labels)
    nuclei[3:7, 2:5], nuclei[3:7, 15:18] = 1, 2
    rows, cols, genes = np.array([5, 5, 5]), np.array([9, 5, 9]), np.array([1, 1, 0])
    cell = labels[rows, cols].astype(np.int64)
    cfg = SpilloverConfig(enabled=True, rule="diffusion")
    args = (labels, nuclei, None, rows, cols, genes, cell, 2, 0.5, cfg, 4.0)
    got, moved = reassign(*args, _toy_state(0.4))
    assert moved.tolist() == [True, False, False] and got.tolist() == [2, 1, 1]
    # no significant decay: nothing moves, however well the neighbour fits
    assert not reassign(*args, _toy_state(0.0))[1].any()
    # cell 2 grew from a seed (IDs above n_nuclei): it takes nothing, and cell 1 keeps its own
    seeded = _toy_state(0.4)
    seeded.n_nuclei = 1
    assert not reassign(*args, seeded)[1].any()
    with pytest.raises(ValueError, match="DiffusionState"):
        reassign(*args)


def test_moved_count_of_a_table_without_the_column_is_zero(tmp_path):
    """An incomplete run whose tiles all failed writes transcripts without ``spillover_moved``:
    counting the moves must report 0, not fail the run's accounting.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stseg_dist import constants as K
    from stseg_dist.driver import _sum_column

    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({K.CELL_ID: pa.array([], pa.int64())}), bare)
    assert _sum_column(str(bare), K.SPILLOVER_MOVED, {}) == 0
    moved = tmp_path / "moved.parquet"
    pq.write_table(pa.table({K.SPILLOVER_MOVED: [True, False, True]}), moved)
    assert _sum_column(str(moved), K.SPILLOVER_MOVED, {}) == 2
