"""SSL-CST: labels, tile-offset-free features, flow tracking, training, the method, the pipeline."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from stseg_dist.config import PipelineConfig, load_config, parse_set
from stseg_dist.errors import ConfigError
from stseg_dist.methods import PrepareContext, TileData, TileTranscripts, get_method
from stseg_dist.methods.sslcst.features import (
    IGNORE,
    direction_class,
    gather_tokens,
    neighbourhood_offsets,
    spot_grid,
    spot_labels,
    unit_steps,
)
from stseg_dist.methods.sslcst.tracking import track
from stseg_dist.methods.sslcst.training import TrainingSpots, load_model, symmetries, train_sslcst
from stseg_dist.tiling import Tile
from tests.conftest import one_tile_vs_many

torch.set_num_threads(1)

PS = 0.5  # µm per pixel
BIN = 1.0  # µm per spot: 2 x 2 pixels


def disc_chip(
    shape=(200, 240),
    centres=((50, 60), (60, 150), (150, 90)),
    radius_px=8,
    n_per_cell=400,
    cell_radius_um=7.0,
    seed=0,
):
    """Disc nuclei (IDs 1..n) on a pixel grid, transcripts dense around each, a far empty corner."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    nuclei = np.zeros(shape, np.uint32)
    xs, ys, gs = [], [], []
    for k, (cy, cx) in enumerate(centres, start=1):
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2] = k
        a = rng.uniform(0, 2 * np.pi, n_per_cell)
        r = cell_radius_um * np.sqrt(rng.uniform(0, 1, n_per_cell))
        xs.append((cx + 0.5) * PS + r * np.cos(a))
        ys.append((cy + 0.5) * PS + r * np.sin(a))
        gs.append(rng.integers(0, 6, n_per_cell) + 2 * k)
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    inside = (x > 0) & (x < w * PS) & (y > 0) & (y < h * PS)
    return nuclei, x[inside], y[inside], g[inside].astype(np.int32)


def cut(nuclei, x, y, g, window, core=None, n_genes=30):
    """TileData of one window of a whole constructed chip (what the driver hands a method)."""
    core = core or window
    r0, r1, c0, c1 = window
    row, col = np.floor(y / PS).astype(np.int64), np.floor(x / PS).astype(np.int64)
    sel = (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
    tile = Tile(0, 0, 0, core, window)
    tx = TileTranscripts(
        x[sel],
        y[sel],
        g[sel],
        row[sel] - r0,
        col[sel] - c0,
        tile.core_contains(row[sel], col[sel]),
        np.flatnonzero(sel),
    )
    return TileData(
        tile,
        PS,
        (0.0, 0.0),
        np.zeros((1, r1 - r0, c1 - c0), np.float32),
        nuclei[r0:r1, c0:c1].copy(),
        tx,
        [f"G{i}" for i in range(n_genes)],
    )


def test_labels_on_a_constructed_case():
    nuclei, x, y, g = disc_chip()
    data = cut(nuclei, x, y, g, (0, 200, 0, 240))
    grid = spot_grid(data, BIN, np.arange(12), d0_um=5.0, d_max_um=30.0)
    inout, direction = spot_labels(
        grid, BIN, k=5, erosion_bins=1, neg_distance_um=8.0, n_directions=16
    )
    nb = grid.binned.nuclei
    pos = inout == 1
    # positives: nucleus spots, never on a nucleus border (one spot of erosion), in every nucleus
    assert pos.any() and (nb[pos] > 0).all()
    assert set(np.unique(nb[pos])) == {1, 2, 3}
    border = (nb > 0) & ~pos
    assert border.any()
    rr, cc = np.nonzero(pos)
    for r, c in zip(rr, cc, strict=True):
        assert (nb[r - 1 : r + 2, c - 1 : c + 2] == nb[r, c]).all()
    # direction: the class of the vector to the nucleus's own centroid (pixel disc centre)
    centres = {1: (50, 60), 2: (60, 150), 3: (150, 90)}
    for r, c in zip(rr, cc, strict=True):
        cy, cx = centres[int(nb[r, c])]
        dy, dx = (cy + 0.5) * PS - (r + 0.5) * BIN, (cx + 0.5) * PS - (c + 0.5) * BIN
        want = (
            IGNORE
            if np.hypot(dy, dx) < 0.5 * BIN
            else direction_class(np.array([dy]), np.array([dx]), 16)[0]
        )
        assert direction[r, c] == want
    assert set(np.unique(direction[pos])) > {0, 4, 8, 12}  # all around the centre
    assert (direction[inout != 1] == IGNORE).all()
    # negatives: only far from every nucleus (brute force) and with an empty 5 x 5 neighbourhood
    neg = inout == 0
    assert neg.sum() > 100
    nr, nc = np.nonzero(nb)
    counts = grid.counts[..., -1]
    for r, c in zip(*np.nonzero(neg), strict=True):
        assert np.hypot(nr - r, nc - c).min() * BIN > 8.0
        assert counts[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3].sum() == 0
    # and every far, empty spot is one
    from scipy import ndimage as ndi

    far = ndi.distance_transform_edt(nb == 0) * BIN > 8.0
    empty = ndi.convolve(counts.astype(int), np.ones((5, 5), int), mode="constant") == 0
    np.testing.assert_array_equal(neg, far & empty)


def test_features_do_not_depend_on_the_window():
    """Counts, prior and tokens of a spot are bitwise the same in windows that start elsewhere."""
    nuclei, x, y, g = disc_chip(
        shape=(240, 300), centres=((60, 70), (70, 160), (170, 100), (150, 230)), seed=1
    )
    top = np.array([3, 5, 2, 7])
    whole = spot_grid(cut(nuclei, x, y, g, (0, 240, 0, 300)), BIN, top, 5.0, 20.0)
    # windows whose edges fall mid-spot (odd pixel) and cut nuclei; compared spots
    # (and their tokens)
    # stay d_max + a nucleus diameter inside, as the method's halo guarantees
    for window in [(31, 240, 47, 283), (1, 211, 13, 300), (0, 199, 75, 300)]:
        part = spot_grid(cut(nuclei, x, y, g, window), BIN, top, 5.0, 20.0)
        b = part.binned
        h, w = b.shape
        rr, cc = np.mgrid[31 : h - 31, 31 : w - 31]
        rr, cc = rr.ravel(), cc.ravel()
        gr, gc = rr + b.origin[0], cc + b.origin[1]
        np.testing.assert_array_equal(part.counts[rr, cc], whole.counts[gr, gc])
        np.testing.assert_array_equal(part.prior[rr, cc], whole.prior[gr, gc])
        ca, pa_ = gather_tokens(part, rr, cc, 5)
        cb, pb = gather_tokens(whole, gr, gc, 5)
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_array_equal(pa_, pb)
    assert (whole.prior > 0.9).any() and (whole.prior == 0).any()  # cut off beyond d_max
    assert whole.counts[..., :-1].sum() < whole.counts[..., -1].sum()  # top genes are a subset


def test_owned_spots_partition_the_chip():
    nuclei, x, y, g = disc_chip()
    seen = np.zeros((100, 120), int)
    for r0, r1 in ((0, 67), (67, 200)):
        for c0, c1 in ((0, 95), (95, 240)):
            window = (max(0, r0 - 20), min(200, r1 + 20), max(0, c0 - 20), min(240, c1 + 20))
            grid = spot_grid(
                cut(nuclei, x, y, g, window, (r0, r1, c0, c1)), BIN, np.arange(3), 5.0, 20.0
            )
            rr, cc = np.nonzero(grid.binned.grid.owned(grid_tile(window, (r0, r1, c0, c1))))
            np.add.at(seen, (rr + grid.binned.origin[0], cc + grid.binned.origin[1]), 1)
    assert (seen == 1).all()


def grid_tile(window, core):
    return Tile(0, 0, 0, core, window)


def test_tracking_reaches_the_right_nucleus():
    h, w = 60, 80
    nuclei = np.zeros((h, w), np.int64)
    centres = {7: (20.0, 20.0), 9: (35.0, 60.0)}
    yy, xx = np.mgrid[:h, :w]
    for i, (cy, cx) in centres.items():
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = i
    # direction field: towards the nearest centre, quantised to 16 classes
    d = [np.hypot(yy - cy, xx - cx) for cy, cx in centres.values()]
    near = np.argmin(d, axis=0)
    cyx = np.array(list(centres.values()))
    field = direction_class(cyx[near, 0] - yy, cyx[near, 1] - xx, 16)
    alive = nuclei == 0
    rr, cc = np.nonzero(alive)
    got = track(rr, cc, field, alive, nuclei, unit_steps(16), max_steps=100)
    want = np.array(list(centres))[near[rr, cc]]
    assert (got == want).all()
    # a step budget shorter than the way leaves far spots unassigned, near ones assigned
    got5 = track(rr, cc, field, alive, nuclei, unit_steps(16), max_steps=5)
    dist = np.min(d, axis=0)[rr, cc]
    assert (got5[dist > 3 + 5 + 1] == 0).all() and (got5[dist < 3 + 4] == want[dist < 3 + 4]).all()
    # a dead band (spots that can reach no nucleus) stops the paths that would cross it
    blocked = alive.copy()
    blocked[:, 40] = False
    got_b = track(rr, cc, field, blocked, nuclei, unit_steps(16), max_steps=100)
    assert (got_b[(cc > 45) & (want == 7)] == 0).all()
    assert (got_b[(cc < 35) & (want == 7)] == 7).all()
    # starts on a nucleus take it at once; a field that points away never arrives
    assert track(np.array([20]), np.array([20]), field, alive, nuclei, unit_steps(16), 1)[0] == 7
    away = (field + 8) % 16
    assert (
        track(rr, cc, away, alive, nuclei, unit_steps(16), 100)[np.min(d, axis=0)[rr, cc] > 4.5]
        == 0
    ).all()


def test_symmetries_turn_tokens_and_directions_together():
    k, n = 5, 16
    dr, dc = neighbourhood_offsets(k)
    sym = symmetries(k, n)
    assert (
        len(sym) == 8
        and (sym[0][0] == np.arange(k * k)).all()
        and (sym[0][1] == np.arange(n)).all()
    )
    assert len({tuple(p) for p, _ in sym}) == 8
    for j in range(0, n, 2):  # directions that hit a token exactly two spots away
        dy, dx = 2 * unit_steps(n)[j]
        if not (np.isclose(dy, np.round(dy)) and np.isclose(dx, np.round(dx))):
            continue
        peak = np.flatnonzero((dr == round(dy)) & (dc == round(dx)))[0]
        for perm, dmap in sym:
            new = np.flatnonzero(perm == peak)[0]  # where the peak token sits after the turn
            assert direction_class(np.array([dr[new]]), np.array([dc[new]]), n)[0] == dmap[j]
        assert sorted(dmap) == list(range(n))


def _training_spots(seed=0):
    """Every positive of 12 nuclei and as many negatives."""
    centres = [(r, c) for r in (30, 100, 170) for c in (35, 95, 155, 215)]
    nuclei, x, y, g = disc_chip(centres=centres, n_per_cell=250, seed=seed)
    data = cut(nuclei, x, y, g, (0, 200, 0, 240))
    grid = spot_grid(data, BIN, np.arange(12), 5.0, 25.0)
    inout, direction = spot_labels(grid, BIN, 5, 1, 8.0, 16)
    pr, pc = np.nonzero(inout == 1)
    nr, nc = np.nonzero(inout == 0)
    pick = np.random.default_rng(0).permutation(len(nr))[: len(pr)]
    r, c = np.concatenate([pr, nr[pick]]), np.concatenate([pc, nc[pick]])
    counts, prior = gather_tokens(grid, r, c, 5)
    return TrainingSpots(
        (r << 32) + c, counts.astype(np.uint16), prior, inout[r, c], direction[r, c]
    )


def test_training_loss_drops_and_is_deterministic():
    cfg = PipelineConfig().cells.sslcst
    cfg.epochs, cfg.batch_size = 16, 64
    spots = _training_spots()
    a = train_sslcst(spots, 5, 13, cfg, device="cpu")
    h = a["history"]
    assert h["inout"][-1] < 0.1 * h["inout"][0] and h["direction"][-1] < 0.8 * h["direction"][0]
    model, _ = load_model(a, "cpu")
    with torch.no_grad():
        lo, ld = model(
            torch.as_tensor(spots.counts.astype(np.float32)), torch.as_tensor(spots.prior)
        )
    assert lo.shape == (len(spots), 2) and ld.shape == (len(spots), 16)
    assert (lo.argmax(1).numpy() == spots.inout).mean() > 0.95
    pos = spots.direction >= 0
    off = np.abs((ld.argmax(1).numpy()[pos] - spots.direction[pos] + 8) % 16 - 8)
    assert (off <= 1).mean() > 0.6  # chance: 3/16
    # seeded: the same weights whatever order the spots arrive in (tiles); another seed differs
    cfg.epochs = 2
    short = train_sslcst(spots, 5, 13, cfg, device="cpu")
    order = np.random.default_rng(1).permutation(len(spots))
    shuffled = TrainingSpots.concat(
        [
            TrainingSpots(
                *(
                    getattr(spots, f)[order]
                    for f in ("key", "counts", "prior", "inout", "direction")
                )
            )
        ]
    )
    assert train_sslcst(shuffled, 5, 13, cfg, device="cpu")["weights"] == short["weights"]
    cfg.seed = 1
    assert train_sslcst(spots, 5, 13, cfg, device="cpu")["weights"] != short["weights"]


def _method(*items):
    cfg = load_config(
        overrides=parse_set(
            [
                "cells.method=sslcst",
                "cells.sslcst.epochs=6",
                "cells.sslcst.n_train_spots=1200",
                *items,
            ]
        ),
        use_env=False,
    )
    return get_method("sslcst", cfg)


def _prepare_on_two_tiles(m, nuclei, x, y, g):
    """Cut the 200 x 240 constructed chip into two tiles with the method's halo; prepare over them
    in process (map_tiles as a list comprehension). Returns (tiles, state).
    """
    halo = int(np.ceil((2 * m.reach_um() + 16) / PS))
    cores = [(0, 200, 0, 120), (0, 200, 120, 240)]
    tiles = [
        cut(nuclei, x, y, g, (0, 200, max(0, c0 - halo), min(240, c1 + halo)), (0, 200, c0, c1))
        for _, _, c0, c1 in cores
    ]
    ctx = PrepareContext(
        None, m.config, None, tiles[0].genes, lambda fn, idx: [fn(tiles[i]) for i in idx], 12
    )
    ctx.grid = [Tile(i, 0, i, t.tile.core, t.tile.window) for i, t in enumerate(tiles)]
    return tiles, m.prepare(ctx)


def test_method_grows_cells_from_their_own_nuclei():
    """Prepare (in-process map_tiles over two tiles) then segment on a constructed chip."""
    centres = [(r, c) for r in (30, 100, 170) for c in (35, 95, 155, 215)]
    nuclei, x, y, g = disc_chip(centres=centres, n_per_cell=250)
    m = _method("cells.sslcst.epochs=10")
    tiles, state = _prepare_on_two_tiles(m, nuclei, x, y, g)
    assert state["train"]["n_in"] > 0 and state["train"]["n_out"] > 0
    m.load(state)
    whole = cut(nuclei, x, y, g, (0, 200, 0, 240))
    cells = m.segment(whole).labels
    assert cells.shape == nuclei.shape and cells.dtype == np.uint32
    assert set(np.unique(cells)) <= set(range(13))
    yy, xx = np.mgrid[:200, :240]
    for i, (cy, cx) in enumerate(centres, start=1):
        d = np.hypot(yy - cy, xx - cx)
        ring = cells[(d > 9) & (d < 12)]  # just outside the nucleus (4 µm)
        assert (ring > 0).mean() > 0.5 and (ring[ring > 0] == i).mean() > 0.95  # its own nucleus
        assert (cells[(d > 22) & (d < 26)] == 0).mean() > 0.9  # 4 µm beyond the last transcript
    # two tiles give the same labels over their cores as the whole window
    for t in tiles:
        r0, r1, c0, c1 = t.tile.core
        got = m.segment(t).labels[t.tile.core_in_window]
        assert (got != cells[r0:r1, c0:c1]).mean() < 0.002


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("neighbourhood=4", "cells.sslcst.neighbourhood"),
        ("n_directions=10", "cells.sslcst.n_directions"),
        ("d0_um=0", "cells.sslcst.d0_um"),
        ("neg_distance_um=-1", "cells.sslcst.neg_distance_um"),
        ("in_threshold=1.5", "cells.sslcst.in_threshold"),
        ("max_steps=0", "cells.sslcst.max_steps"),
        ("epochs=0", "cells.sslcst.epochs"),
        ("d_model=30", "cells.sslcst.d_model"),
        ("bin_um=0", "cells.sslcst.bin_um"),
        ("erosion_bins=-1", "cells.sslcst.erosion_bins"),
        ("n_genes=0", "cells.sslcst.n_genes"),
        ("variant=published", "cells.sslcst.variant"),
        ("blocks=0", "cells.sslcst.blocks"),
        ("centre_radius_um=0", "cells.sslcst.centre_radius_um"),
        ("fill_um=-1", "cells.sslcst.fill_um"),
    ],
)
def test_bad_config(item, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        _method(f"cells.sslcst.{item}")


def test_bad_config_types_and_keys():
    with pytest.raises(ConfigError, match="cells.sslcst.neighbourhood"):
        _method("cells.sslcst.neighbourhood=five")
    with pytest.raises(ConfigError, match="directions"):
        _method("cells.sslcst.directions=16")


def test_no_negatives_is_an_input_error():
    from stseg_dist.errors import InputError

    nuclei, x, y, g = disc_chip()
    m = _method("cells.sslcst.neg_distance_um=500")
    data = cut(nuclei, x, y, g, (0, 200, 0, 240))

    class Chip:
        url = "constructed"

    ctx = PrepareContext(
        Chip(), m.config, [data.tile], data.genes, lambda fn, idx: [fn(data) for _ in idx], 3
    )
    with pytest.raises(InputError, match="neg_distance_um=500"):
        m.prepare(ctx)


# -- the pipeline ---------------------------------------------------------------------------------
#: Vendor nuclei keep this test independent of the nuclei stage
#: (classical nuclei are tile-exact too).
FAST = [
    "cells.method=sslcst",
    "cells.sslcst.n_train_spots=1500",
    "cells.sslcst.epochs=4",
    "runtime.progress=false",
    "nuclei.backend=vendor",
]


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    from stseg_dist.synth import synth_chip

    out = tmp_path_factory.mktemp("sslcst") / "chip"
    synth_chip(str(out), 120, 100, seed=4, vendor_nuclei=True)
    return str(out)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, fill_um", [("stseg", 0), ("paper", 0), ("stseg", 2), ("paper", 2)]
)
def test_pipeline_tile_invariance_and_accounting(chip, tmp_path, ray_module, variant, fill_um):
    items = FAST + [f"cells.sslcst.variant={variant}", f"cells.sslcst.fill_um={fill_um}"]
    items += ["cells.sslcst.blocks=2"] if variant == "paper" else []
    one, many, (a, na), (b, nb) = one_tile_vs_many(chip, tmp_path, items, tile_um=32)
    assert one["n_tiles"] == 1 and many["n_tiles"] >= 9
    # exact: features, training data and paths are functions of chip coordinates, and the encoder
    # runs in fixed-size chunks (measured: 0 pixels differ)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(na, nb)
    assert ((nb == 0) | (b == nb)).all()  # nuclei always keep their cell
    assert (b > 0).mean() > 1.5 * (nb > 0).mean()  # cells reach beyond their nuclei
    # every input transcript exactly once, with the label under it
    tx = pd.read_parquet(tmp_path / "many" / "transcripts.parquet")
    assert sorted(tx.input_row) == list(range(many["counts"]["n_transcripts_input"]))
    meta = json.loads((tmp_path / "many" / "run.json").read_text())
    assert meta["counts"]["n_transcripts"] == len(tx)
    truth = pd.read_parquet(chip + "/transcripts.parquet", columns=["x", "y"])
    assert len(truth) == len(tx)
    assert set(np.unique(tx.cell_id)) - {0} <= set(np.unique(b)) - {0}


@pytest.mark.parametrize("variant", ["stseg", "paper"])
def test_fill_grows_masks_over_empty_spots_and_moves_no_transcript(chip, tmp_path, variant):
    """fill_um changes neither the network's features nor any transcript's cell; masks only grow."""
    import zarr

    from stseg_dist.driver import run_pipeline

    base = (
        FAST
        + [f"cells.sslcst.variant={variant}"]
        + (["cells.sslcst.blocks=2"] if variant == "paper" else [])
    )
    out = {}
    for fill in (0, 2):
        cfg = load_config(
            overrides=parse_set([*base, f"cells.sslcst.fill_um={fill}"]), use_env=False
        )
        run_pipeline(chip, str(tmp_path / str(fill)), cfg, local=True)
        out[fill] = (
            zarr.open_array(str(tmp_path / str(fill) / "labels.zarr" / "cells"))[:],
            pd.read_parquet(tmp_path / str(fill) / "transcripts.parquet").sort_values("input_row"),
        )
    (a, ta), (b, tb) = out[0], out[2]
    np.testing.assert_array_equal(ta.cell_id.to_numpy(), tb.cell_id.to_numpy())
    assert (b[a > 0] == a[a > 0]).all() and (b > 0).sum() > (a > 0).sum()


def test_close_cells_fills_only_free_unlabelled_spots():
    """A porous cell closes over its empty spots; labelled and occupied spots stay as they are,
    and nothing grows beyond the closing or joins the neighbour.
    """
    from stseg_dist.methods.sslcst.method import close_cells

    cells = np.zeros((20, 30), np.int64)
    cells[4:11:2, 4:11:2] = 7  # a lattice of tracked spots, one empty spot between each
    cells[4:11:2, 16:23:2] = 3
    free = np.ones_like(cells, bool)
    free[7, 7] = False  # a spot holding transcripts that no path reached
    out = close_cells(cells, free, 2)
    assert (out[5:10, 5:10] == 7).sum() == 5 * 5 - 1 and out[7, 7] == 0  # the interior, bar (7, 7)
    assert (out[5:10, 17:22] == 3).all()
    assert (out[cells > 0] == cells[cells > 0]).all()
    assert (out[:, 11:16] == 0).all() and (out[:4] == 0).all() and (out[11:] == 0).all()


# -- the paper variant (Huo et al.) ---------------------------------------------------------------
def test_paper_labels_need_expression_and_floor_the_direction():
    nuclei, x, y, g = disc_chip()
    keep = ~((x < 60 * PS) & (y < 70 * PS))  # nucleus 1's upper-left quarter holds no transcript
    grid = spot_grid(
        cut(nuclei, x[keep], y[keep], g[keep], (0, 200, 0, 240)), BIN, np.arange(12), 5.0, 30.0
    )
    ours, _ = spot_labels(grid, BIN, 5, 1, 8.0, 16)
    inout, direction = spot_labels(grid, BIN, 5, 1, 8.0, 16, need_expression=True, floor=True)
    total = grid.counts[..., -1]
    np.testing.assert_array_equal(inout == 1, (ours == 1) & (total > 0))
    assert ((ours == 1) & (total == 0)).sum() > 10  # the empty quarter's positives are gone
    np.testing.assert_array_equal(inout == 0, ours == 0)  # negatives unchanged
    # floor: class j is the bin [j, j+1) x 22.5 degrees
    centres = {1: (50, 60), 2: (60, 150), 3: (150, 90)}
    nb = grid.binned.nuclei
    for r, c in zip(*np.nonzero(inout == 1), strict=True):
        cy, cx = centres[int(nb[r, c])]
        dy, dx = (cy + 0.5) * PS - (r + 0.5) * BIN, (cx + 0.5) * PS - (c + 0.5) * BIN
        if np.hypot(dy, dx) >= 0.5 * BIN:
            assert direction[r, c] == int(np.floor(np.arctan2(dy, dx) / (np.pi / 8))) % 16
    assert direction_class(np.array([1.0]), np.array([1.0]), 16, floor=True)[0] == 2
    assert direction_class(np.array([0.1]), np.array([1.0]), 16, floor=True)[0] == 0
    assert direction_class(np.array([-0.1]), np.array([1.0]), 16, floor=True)[0] == 15
    np.testing.assert_allclose(
        unit_steps(16, centre=True)[0], [np.sin(np.pi / 16), np.cos(np.pi / 16)]
    )


def test_direction_prior_and_centre_map():
    from stseg_dist.methods.sslcst.features import centre_map, direction_mask

    nuclei, x, y, g = disc_chip()
    grid = spot_grid(cut(nuclei, x, y, g, (0, 200, 0, 240)), BIN, np.arange(12), 5.0, 30.0)
    # nucleus 1: centroid (25.25, 30.25) µm, radius ~4 µm; a spot 10 µm east of it sees it westwards
    # only
    r, c = np.array([25]), np.array([40])
    mask = direction_mask(grid, r, c, BIN, 12.0, 16, floor=True)[0]
    assert mask[7] and mask[8] and mask.sum() <= 6  # 180 degrees is the edge of bins 7 and 8
    assert not direction_mask(grid, r, c, BIN, 8.0, 16, floor=True).any()  # out of reach
    assert not direction_mask(grid, np.array([5]), np.array([110]), BIN, 12.0, 16, floor=True).any()
    # every spot within reach of a nucleus keeps the class of its centroid's direction
    rr, cc = np.nonzero(np.ones(grid.shape, bool))
    m = direction_mask(grid, rr, cc, BIN, 10.0, 16, floor=True)
    sy, sx = grid.spot_um(rr, cc, BIN)
    for _i, (cy, cx) in grid.centroids.items():
        near = np.hypot(cy - sy, cx - sx) <= 10.0
        cls = direction_class(cy - sy[near], cx - sx[near], 16, floor=True)
        assert m[np.flatnonzero(near), cls].all()
    centres = centre_map(grid, BIN, 1.5)
    for i, (cy, cx) in grid.centroids.items():
        on = np.argwhere(centres == i)
        assert 1 <= len(on) <= 9
        assert (np.hypot((on[:, 0] + 0.5) - cy, (on[:, 1] + 0.5) - cx) <= 1.5).all()


def test_paper_symmetries_map_floor_bins():
    k, n = 5, 16
    for _perm, dmap in symmetries(k, n, floor=True):
        assert sorted(dmap) == list(range(n))
    flip = [d for p, d in symmetries(k, n, floor=True)][
        4
    ]  # a mirror: bins map j -> a reversed order
    assert len({(int(flip[j]) + j) % n for j in range(n)}) == 1


def test_paper_encoder_is_pre_ln_with_blocks():
    from stseg_dist.methods.sslcst.model import PreLNBlock, SpotEncoder

    m = SpotEncoder(13, 5, blocks=8, pre_ln=True)
    assert sum(isinstance(x, PreLNBlock) for x in m.modules()) == 8
    lo, ld = m(torch.rand(3, 25, 13), torch.rand(3, 25))
    assert lo.shape == (3, 2) and ld.shape == (3, 16)


def test_paper_method_grows_cells_from_their_own_nuclei():
    """The paper variant on the constructed chip: cells around their own nuclei, tiles exact."""
    centres = [(r, c) for r in (30, 100, 170) for c in (35, 95, 155, 215)]
    nuclei, x, y, g = disc_chip(centres=centres, n_per_cell=250)
    m = _method("cells.sslcst.variant=paper", "cells.sslcst.epochs=10", "cells.sslcst.blocks=2")
    assert m.paper and m.model is None
    tiles, state = _prepare_on_two_tiles(m, nuclei, x, y, g)
    assert len(state["top_genes"]) == 30 and state["train"]["arch"]["blocks"] == 2
    m.load(state)
    cells = m.segment(cut(nuclei, x, y, g, (0, 200, 0, 240))).labels
    yy, xx = np.mgrid[:200, :240]
    for i, (cy, cx) in enumerate(centres, start=1):
        d = np.hypot(yy - cy, xx - cx)
        ring = cells[(d > 9) & (d < 12)]
        assert (ring > 0).mean() > 0.5 and (ring[ring > 0] == i).mean() > 0.9
    for t in tiles:
        r0, r1, c0, c1 = t.tile.core
        np.testing.assert_array_equal(
            m.segment(t).labels[t.tile.core_in_window], cells[r0:r1, c0:c1]
        )
