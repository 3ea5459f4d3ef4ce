"""GeneSegNet: RNA map, bin grid, U-Net, training and refinement, seamless windows, and the method
through the pipeline (tile invariance, exact-once accounting).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stseg_dist.config import PipelineConfig, load_config, parse_set
from stseg_dist.errors import ConfigError
from stseg_dist.methods.common.bins import BinGrid
from stseg_dist.methods.genesegnet.features import (
    gaussian_kernel,
    kernel_radius,
    nucleus_centres,
    rna_map,
)
from stseg_dist.methods.genesegnet.inference import (
    assign_cells,
    sliding_predict,
    taper,
    torch_predictor,
)
from stseg_dist.methods.genesegnet.net import UNet
from stseg_dist.methods.genesegnet.training import (
    Geometry,
    Patch,
    load_model,
    refine,
    train_genesegnet,
)
from tests.conftest import one_tile_vs_many

torch.set_num_threads(1)


def test_rna_map_equals_gaussian_sum():
    rng = np.random.default_rng(0)
    shape, sigma = (30, 40), 1.7
    rows = np.append(rng.integers(0, 30, 200), [-3, 31])  # two outside the grid: no contribution
    cols = np.append(rng.integers(0, 40, 200), [5, 5])
    got = rna_map(rows, cols, shape, sigma)
    radius = kernel_radius(sigma)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    want = np.zeros(shape)
    for r, c in zip(rows[:-2], cols[:-2], strict=True):
        near = (np.abs(yy - r) <= radius) & (
            np.abs(xx - c) <= radius
        )  # the kernel's 4-sigma square
        want += np.where(near, np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2)), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert gaussian_kernel(sigma).max() == 1.0  # each transcript adds 1 at its own bin


def test_work_grid_is_anchored_to_the_chip():
    """Two windows cut at different offsets agree on every bin and nucleus centre they share."""
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (90, 100))
    nuclei = np.zeros((90, 100), np.int64)
    nuclei[40:47, 50:58] = 7
    a = BinGrid.for_window((3, 90, 5, 100), factor=3)
    b = BinGrid.for_window((31, 80, 44, 95), factor=3)
    ma, mb = a.block_mean(image[3:90, 5:100]), b.block_mean(image[31:80, 44:95])
    # bins 11..25 (rows), 15..30 (cols) lie whole inside both windows
    sa = ma[11 - a.origin[0] : 26 - a.origin[0], 15 - a.origin[1] : 31 - a.origin[1]]
    sb = mb[11 - b.origin[0] : 26 - b.origin[0], 15 - b.origin[1] : 31 - b.origin[1]]
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_allclose(sa[0, 0], image[33:36, 45:48].mean(), rtol=1e-6)
    ia, ca = nucleus_centres(a, nuclei[3:90, 5:100])
    ib, cb = nucleus_centres(b, nuclei[31:80, 44:95])
    assert list(ia) == list(ib) == [7]
    np.testing.assert_array_equal(ca + a.origin, cb + b.origin)
    np.testing.assert_allclose(ca[0] + a.origin, [(43 + 0.5) / 3, (53.5 + 0.5) / 3])
    labels = np.arange(np.prod(a.shape)).reshape(a.shape)
    px = a.to_pixels(labels, (87, 95))
    assert px.shape == (87, 95) and px[0, 0] == labels[0, 0] and px[-1, -1] == labels[-1, -1]
    assert (
        px[3:6, 1:4] == labels[1, 1]
    ).all()  # pixels 6..8 (rows) and 6..8 (cols): bin 2 = local 1


def test_unet_shapes():
    net = UNet(width=4).eval()
    out = net(torch.zeros(2, 2, 32, 48))
    assert out.shape == (2, 3, 32, 48)


def test_sliding_merge_has_no_seam():
    """With a pointwise model, many blended windows give exactly what one pass over the array
    gives.
    """
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 50, 70)).astype(np.float32)

    def pointwise(b):
        return np.stack([np.tanh(b[:, 0] * 2 + b[:, 1]), b[:, 0] * b[:, 1]], axis=1)

    merged = sliding_predict(pointwise, x, origin=(5, 13), size=16)
    np.testing.assert_allclose(merged, pointwise(x[None])[0], rtol=1e-5, atol=1e-6)
    t = taper(16)
    np.testing.assert_allclose(
        t[:8] + t[8:], 1.0, rtol=1e-12
    )  # copies at half-window steps sum to 1


def test_unet_windows_depend_on_global_position_only():
    """A region predicted inside two differently cut arrays gives the same output away from the
    cuts.
    """
    torch.manual_seed(0)
    net = UNet(width=4).eval()
    predict = torch_predictor(net, "cpu", offset_scale=10.0)
    rng = np.random.default_rng(3)
    chip = rng.normal(size=(2, 160, 160)).astype(np.float32)
    a = sliding_predict(predict, chip[:, 0:140, 10:150], origin=(0, 10), size=24)
    b = sliding_predict(predict, chip[:, 37:160, 41:160], origin=(37, 41), size=24)
    # rows 37+24 .. 140-24 and cols 41+24 .. 150-24 are more than a window from both cuts
    np.testing.assert_allclose(a[:, 61:116, 55:116], b[:, 24:79, 24:85], rtol=1e-4, atol=1e-5)


def test_assign_cells_follows_offsets():
    prob = np.zeros((20, 30), np.float32)
    prob[2:18, 2:28] = 0.9
    ids = np.array([4, 9])
    centroids = np.array([[10.0, 8.0], [10.0, 22.0]])
    rr, cc = np.mgrid[:20, :30] + 0.5
    offsets = np.zeros((2, 20, 30), np.float32)
    left = cc < 15
    offsets[0] = 10.0 - rr
    offsets[1] = np.where(left, 8.0 - cc, 22.0 - cc)
    offsets[:, 5, 14] = [10.0 - 5.5, 22.0 - 14.5]  # left of the middle, but points at nucleus 9
    offsets[:, 6, 6] = [40.0, 40.0]  # lands on no nucleus
    lab = assign_cells(
        prob, offsets, ids, centroids, threshold=0.5, reach_bins=12, tolerance_bins=2
    )
    assert lab[10, 3] == 4 and lab[10, 25] == 9 and lab[5, 14] == 9
    assert lab[6, 6] == 0 and lab[0, 0] == 0  # off target; not confident
    lab = assign_cells(prob, offsets, ids, centroids, threshold=0.5, reach_bins=4, tolerance_bins=2)
    assert lab[10, 3] == 0 and lab[10, 10] == 4  # beyond the reach of its nucleus


def _toy_patches(n=8, size=32, seed=0):
    """Discs of nuclei (bright stain) inside larger RNA-rich cells, on a dim RNA-poor background."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cy, cx = rng.uniform(12, 20, 2)
        d2 = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2
        nuc = np.where(d2 <= 9, k + 1, 0).astype(np.int64)
        cell = np.where(d2 <= 49, k + 1, 0).astype(np.int64)
        stain = (1000 * (nuc > 0) + rng.normal(100, 10, (size, size))).astype(np.float32)
        rna = (np.where(cell > 0, 3.0, 0.2) + rng.uniform(0, 0.3, (size, size))).astype(np.float32)
        init = np.where(d2 <= 16, k + 1, 0).astype(np.int64)
        out.append(
            Patch(k + 1, stain, rna, nuc, init, cell, np.array([k + 1]), np.array([[cy, cx]]))
        )
    return out


NORM = {"stain_lo": 100.0, "stain_hi": 1100.0, "rna_mean": 1.0}
GEOMETRY = Geometry(offset_scale=10.0, reach=10.0, tolerance=3.0)


def _cfg(**kw):
    cfg = PipelineConfig().cells.genesegnet
    cfg.epochs, cfg.batch_size, cfg.max_rounds, cfg.width, cfg.lr = 6, 4, 2, 8, 5e-3
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_training_learns_and_is_deterministic():
    a = train_genesegnet(_toy_patches(), NORM, _cfg(max_rounds=1), GEOMETRY)
    b = train_genesegnet(
        list(reversed(_toy_patches())), NORM, _cfg(max_rounds=1), GEOMETRY
    )  # order is irrelevant
    first = a["history"][0]["epoch_losses"]
    assert first[-1] < 0.7 * first[0]
    assert a["weights"] == b["weights"]
    c = train_genesegnet(_toy_patches(), NORM, _cfg(max_rounds=1, seed=1), GEOMETRY)
    assert c["weights"] != a["weights"]  # the seed matters
    model, _ = load_model(a, "cpu")
    assert isinstance(model, UNet) and not model.training


def test_refinement_stops_when_rounds_agree():
    base = np.zeros((10, 10), np.int64)
    base[2:6, 2:6] = 1
    grown = base.copy()
    grown[2:8, 2:8] = 1  # IoU with base: 16/36

    fits = []
    steady = refine(
        [base],
        lambda labels: fits.append(labels[0].copy()) or [1.0],
        lambda: [grown.copy()],
        max_rounds=5,
        agree_iou=0.93,
    )
    # round 1 trains on base and predicts grown (IoU 0.44); round 2 trains on grown and agrees
    # (IoU 1)
    assert [h["iou_with_previous"] for h in steady] == pytest.approx([16 / 36, 1.0])
    assert (fits[1] == grown).all()
    flip = iter([grown, base] * 5)
    restless = refine(
        [base], lambda labels: [1.0], lambda: [next(flip).copy()], max_rounds=4, agree_iou=0.93
    )
    assert len(restless) == 4  # never agree: stops at the round limit


def test_refinement_rounds_in_training():
    """The real loop: a target the first round already meets ends it; an unreachable one runs all
    rounds.
    """
    easy = train_genesegnet(
        _toy_patches(4), NORM, _cfg(epochs=2, max_rounds=3, agree_iou=1e-6), GEOMETRY
    )
    hard = train_genesegnet(
        _toy_patches(4), NORM, _cfg(epochs=2, max_rounds=3, agree_iou=1.0), GEOMETRY
    )
    assert len(easy["history"]) == 1 and len(hard["history"]) == 3
    # the rounds converge: round 1 (2 epochs on the initial labels) predicts cells much larger than
    # those labels (IoU 0.25 seeds 0-2), later rounds train on their own output and agree (0.95-1.0)
    ious = [h["iou_with_previous"] for h in hard["history"]]
    assert ious[0] < 0.5 and ious[0] < ious[1] <= ious[2] and ious[2] > 0.9, ious


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("patch_px", 20, "patch_px"),
        ("patch_px", 8, "patch_px"),
        ("bin_um", 0, "bin_um"),
        ("rna_sigma_um", -1, "rna_sigma_um"),
        ("init_expand_um", -2, "init_expand_um"),
        ("epochs", 0, "epochs"),
        ("max_rounds", 0, "max_rounds"),
        ("agree_iou", 1.5, "agree_iou"),
        ("prob_threshold", 1, "prob_threshold"),
        ("lr", 0, "lr"),
    ],
)
def test_bad_config(key, value, fragment):
    from stseg_dist.methods.genesegnet import GeneSegNetMethod

    cfg = load_config(overrides=parse_set([f"cells.genesegnet.{key}={value}"]), use_env=False)
    with pytest.raises(ConfigError, match=f"cells.genesegnet.{fragment}.*{value}"):
        GeneSegNetMethod(cfg)


def test_bad_config_type_names_the_key():
    with pytest.raises(ConfigError, match="cells.genesegnet.epochs"):
        load_config(overrides=parse_set(["cells.genesegnet.epochs=many"]), use_env=False)


# -- through the pipeline ---------------------------------------------------------------------

FAST = [
    "cells.method=genesegnet",
    "cells.genesegnet.n_train_patches=16",
    "cells.genesegnet.epochs=2",
    "cells.genesegnet.max_rounds=2",
    "cells.genesegnet.patch_px=24",
    "cells.genesegnet.width=8",
    "runtime.progress=false",
]


def _generated_chip(
    tmp_path_factory, name: str, width_um: float, height_um: float, seed: int
) -> str:
    from stseg_dist.synth import synth_chip

    out = tmp_path_factory.mktemp(name) / "chip"
    synth_chip(str(out), width_um, height_um, seed=seed)
    return str(out)


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    return _generated_chip(tmp_path_factory, "genesegnet", 128, 96, 5)


@pytest.mark.ray
@pytest.mark.slow
def test_tile_invariance_and_accounting(chip, tmp_path, ray_module):
    one, many, (a, na), (b, nb) = one_tile_vs_many(chip, tmp_path, FAST, tile_um=32)
    assert one["n_tiles"] == 1 and many["n_tiles"] >= 12
    # exact: the nuclei are tile-exact, training sees the same patches whatever the tiling, and
    # every inference window is cut at the same chip position (measured: 0 pixels differ)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(a, b)
    assert (b > 0).mean() > (nb > 0).mean()  # cells grew beyond their nuclei
    # exactly once: every input transcript appears once, with the cell under its pixel
    tx = pd.read_parquet(tmp_path / "many" / "transcripts.parquet")
    assert sorted(tx.input_row) == list(range(many["counts"]["n_transcripts_input"]))
    cells = pd.read_parquet(tmp_path / "many" / "cells.parquet")
    assert cells.cell_id.is_unique and set(cells.cell_id) <= set(
        np.unique(nb[nb > 0])
    )  # cells keep nucleus IDs
    assert int(cells.n_transcripts.sum()) == int((tx.cell_id > 0).sum())
    meta = json.loads((Path(chip) / "chip.json").read_text())
    ps, (x0, y0) = meta["pixel_size_um"], meta.get("origin_um", (0.0, 0.0))
    r = np.clip(np.floor((tx.y.to_numpy() - y0) / ps).astype(int), 0, b.shape[0] - 1)
    c = np.clip(np.floor((tx.x.to_numpy() - x0) / ps).astype(int), 0, b.shape[1] - 1)
    assert (
        tx.cell_id.to_numpy() == b[r, c]
    ).mean() > 0.999  # the cell under each transcript's pixel
    assert ((nb == 0) | (b == nb)).all()  # nuclei always kept by their cell
    run = json.loads((tmp_path / "many" / "run.json").read_text())
    assert run["status"] == "complete"


# -- variant: paper ---------------------------------------------------------------------------


def test_paper_rna_input_is_the_clipped_gaussian_sum():
    from stseg_dist.methods.genesegnet.features import normalise_inputs

    rna = np.array([[0.0, 0.4, 1.0, 7.5]], np.float32)
    stain = np.zeros_like(rna)
    paper = normalise_inputs(stain, rna, {**NORM, "rna_clip": 1.0})[1]
    np.testing.assert_allclose(paper, [[0.0, 0.4, 1.0, 1.0]])
    np.testing.assert_allclose(
        normalise_inputs(stain, rna, {**NORM, "rna_clip": 2.0})[1], [[0.0, 0.2, 0.5, 1.0]]
    )
    np.testing.assert_allclose(
        normalise_inputs(stain, rna, NORM)[1], np.log1p(rna)
    )  # stseg: log1p of the mean


def test_predicted_centres_match_nuclei():
    from stseg_dist.methods.genesegnet.inference import predicted_centres

    centre = np.zeros((30, 30), np.float32)
    centre[10, 11] = 0.9  # near nucleus 4 (at 10, 10)
    centre[12, 8] = 0.5  # also near it, weaker: loses
    centre[20, 20] = 0.8  # near no nucleus: ignored
    centre[5, 25] = 0.2  # near nucleus 7 but below the threshold
    ids, cents = np.array([4, 7]), np.array([[10.0, 10.0], [5.0, 25.0]])
    got_ids, got = predicted_centres(
        centre, ids, cents, 0.3, radius_bins=1, tolerance_bins=3, fallback=True
    )
    assert list(got_ids) == [4, 7]
    np.testing.assert_allclose(got, [[10.5, 11.5], [5.0, 25.0]])  # 7 keeps its centroid (fallback)
    got_ids, got = predicted_centres(
        centre, ids, cents, 0.3, radius_bins=1, tolerance_bins=3, fallback=False
    )
    assert list(got_ids) == [4]  # as published: no predicted centre, no cell


def test_assign_to_centres_follows_offsets_to_predicted_centres():
    from stseg_dist.methods.genesegnet.inference import assign_to_centres

    prob = np.full((20, 40), 0.9, np.float32)
    rr, cc = np.mgrid[:20, :40] + 0.5
    centre = np.zeros((20, 40), np.float32)
    centre[10, 12], centre[10, 27] = 0.9, 0.9  # predicted centres, 2 bins from each centroid
    offsets = np.stack([10.5 - rr, np.where(cc < 20, 12.5 - cc, 27.5 - cc)]).astype(np.float32)
    ids, cents = np.array([3, 5]), np.array([[10.0, 10.0], [10.0, 29.0]])
    lab = assign_to_centres(
        prob,
        centre,
        offsets,
        ids,
        cents,
        0.5,
        reach_bins=15,
        tolerance_bins=3,
        centre_threshold=0.3,
        fallback=True,
    )
    assert lab[3, 3] == 3 and lab[15, 35] == 5 and lab[10, 19] == 3 and lab[10, 21] == 5
    # offsets aimed at the nucleus centroids instead land 2 bins off: still within the tolerance
    far = assign_to_centres(
        prob,
        centre,
        offsets,
        ids,
        cents,
        0.5,
        reach_bins=8,
        tolerance_bins=3,
        centre_threshold=0.3,
        fallback=True,
    )
    assert far[10, 25] == 5 and far[0, 0] == 0  # beyond the reach of nucleus 3's centroid


def test_scale_rotate_crop_moves_offsets_with_their_centre():
    """After augmentation every weighted bin's offset still lands on its cell's (moved) centre,
    which is where the centre map's target peaks.
    """
    from stseg_dist.methods.genesegnet.training import scale_rotate_crop, targets

    size, cy, cx = 32, 14.3, 17.6
    rr, cc = np.mgrid[:size, :size] + 0.5
    lab = np.where(np.hypot(rr - cy, cc - cx) < 8, 1, 0).astype(np.int64)
    p = Patch(
        1,
        *(np.zeros((size, size), np.float32),) * 2,
        lab,
        lab,
        lab,
        np.array([1]),
        np.array([[cy, cx]]),
    )
    y = torch.as_tensor(targets(lab, p, 1.0, 1.5))[None].repeat(6, 1, 1, 1)
    _, yo = scale_rotate_crop(
        torch.zeros(6, 2, size, size), y, np.random.default_rng(0), (0.75, 1.25)
    )
    for b in range(6):
        r, c = np.nonzero(yo[b, 3].numpy() > 0)
        assert len(r) > 50
        land = np.stack([r + 0.5 + yo[b, 1].numpy()[r, c], c + 0.5 + yo[b, 2].numpy()[r, c]], 1)
        peak = np.array(np.unravel_index(np.argmax(yo[b, 5].numpy()), (size, size))) + 0.5
        assert land.std(0).max() < 0.6  # one landing point (nearest sampling: sub-bin spread)
        assert np.abs(land.mean(0) - peak).max() < 1.0


def test_level_set_grows_a_mask_to_its_cell_but_not_into_a_neighbour():
    from stseg_dist.methods.genesegnet.training import level_set_refine

    size = 40
    rr, cc = np.mgrid[:size, :size] + 0.5
    image = np.zeros((size, size))
    image[np.hypot(rr - 20, cc - 12) < 8] = 1.0  # cell 1's true extent
    image[np.hypot(rr - 20, cc - 28) < 8] = 1.0  # cell 2, touching
    lab = np.zeros((size, size), np.int64)
    lab[np.hypot(rr - 20, cc - 12) < 4] = 1  # an under-grown mask
    lab[np.hypot(rr - 20, cc - 28) < 8] = 2
    p = Patch(
        1,
        *(np.zeros((size, size), np.float32),) * 2,
        lab,
        lab,
        lab,
        np.array([1, 2]),
        np.array([[20.0, 12.0], [20.0, 28.0]]),
    )
    for method in ("chan_vese", "geodesic"):
        out = level_set_refine(lab, image, p, reach=30, method=method, iters=30)
        assert not ((out == 1) & (lab == 2)).any()  # never takes another cell's bins
        # the small mask grows toward its cell's edge (by at most LEVEL_SET_PAD bins a round):
        # 52 -> 184 bins of 208 (both methods)
        assert (out == 1).sum() > 3 * (lab == 1).sum()
        assert ((out == 1) <= (image > 0)).all()
    out = level_set_refine(lab, image, p, reach=30, method="chan_vese", iters=30)
    assert (out == 2).sum() >= (lab == 2).sum()  # a right mask stays (chan-vese; 216 of 208)
    assert (
        level_set_refine(lab, image, p, reach=5, method="chan_vese", iters=30)[20, 5] == 0
    )  # the reach holds


def test_resunet_shapes_and_paper_state():
    from stseg_dist.methods.genesegnet.net import PreActBlock, ResUNet

    net = ResUNet(width=4).eval()
    assert net(torch.zeros(2, 2, 32, 48)).shape == (2, 4, 32, 48)
    assert sum(isinstance(m, PreActBlock) for m in net.modules()) == 7  # 4 scales down, 3 up
    cfg = _cfg(max_rounds=2, epochs=3, variant="paper")
    a = train_genesegnet(_toy_patches(), NORM, cfg, GEOMETRY)
    b = train_genesegnet(list(reversed(_toy_patches())), NORM, cfg, GEOMETRY)
    assert a["weights"] == b["weights"] and a["net"] == "resunet4" and a["n_outputs"] == 4
    model, _ = load_model(a, "cpu")
    assert isinstance(model, ResUNet)
    first = a["history"][0]["epoch_losses"]
    assert first[-1] < 0.8 * first[0], first


@pytest.mark.parametrize(
    "key, value",
    [
        ("variant", "cellpose"),
        ("level_set", "snake"),
        ("augment", "mixup"),
        ("net", "resnet"),
        ("centre_threshold", 1.0),
        ("rna_clip", 0),
        ("level_set_iters", 0),
        ("scale_max", 0.5),
    ],
)
def test_bad_paper_config(key, value):
    with pytest.raises(ConfigError, match=f"cells.genesegnet.{key}"):
        load_config(
            overrides=parse_set(["cells.method=genesegnet", f"cells.genesegnet.{key}={value}"]),
            use_env=False,
        ).validate()


PAPER = ["cells.genesegnet.variant=paper"]


@pytest.mark.ray
@pytest.mark.slow
def test_paper_tile_invariance(chip, tmp_path, ray_module):
    """The centre map, its peaks and their matching look only near each nucleus: still exact."""
    items = [*FAST, *PAPER]
    one, many, (a, na), (b, nb) = one_tile_vs_many(chip, tmp_path, items, tile_um=32)
    assert many["n_tiles"] >= 12
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(a, b)
    assert (b > 0).mean() > (nb > 0).mean()
    assert ((nb == 0) | (b == nb)).all()


@pytest.fixture(scope="module")
def accuracy_chip(tmp_path_factory):
    return _generated_chip(tmp_path_factory, "genesegnet_accuracy", 120, 120, 1)


@pytest.mark.slow
def test_paper_accuracy_against_expansion(accuracy_chip, tmp_path):
    """Cell F1 at IoU 0.5 and transcripts in their true cell on a generated chip, paper vs stseg vs
    expansion (figures measured here, in the comments; CPU-sized training: 64 patches x 4 epochs).
    """
    from stseg_dist.driver import run_pipeline
    from tests.methods.test_membrane import cell_f1, right_cell

    train = [
        "cells.genesegnet.n_train_patches=64",
        "cells.genesegnet.epochs=4",
        "runtime.progress=false",
    ]
    runs = {
        "expansion": ["cells.method=expansion"],
        "stseg": ["cells.method=genesegnet"],
        "paper": ["cells.method=genesegnet", *PAPER],
    }
    f1, right = {}, {}
    for name, items in runs.items():
        run_pipeline(
            accuracy_chip,
            str(tmp_path / name),
            load_config(overrides=parse_set([*train, *items]), use_env=False),
            local=True,
        )
        f1[name], right[name] = (
            cell_f1(accuracy_chip, tmp_path / name),
            right_cell(accuracy_chip, tmp_path / name),
        )
    print(
        "cell F1:",
        {k: round(v, 3) for k, v in f1.items()},
        "right cell:",
        {k: round(v, 3) for k, v in right.items()},
    )
    # measured (120 µm chip, seed 1): F1 expansion 0.887, stseg 0.792, paper 0.887; right cell
    # 0.732, 0.761, 0.624. The paper variant matches expansion on F1 here and beats ours, but puts
    # fewer transcripts in their true cell on a chip this small (~50 cells to train on; on a 200 µm
    # chip it is 0.789 vs expansion's 0.742: docs/accuracy.md)
    assert f1["paper"] >= f1["expansion"]
    assert f1["paper"] > f1["stseg"] + 0.05
    assert right["paper"] > 0.55
