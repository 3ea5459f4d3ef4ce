"""GeneSegNet: RNA map, bin grid, U-Net, training and refinement, seamless windows, and the method
through the pipeline (tile invariance, exact-once accounting)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stseg_dist.config import PipelineConfig, load_config, parse_set
from stseg_dist.errors import ConfigError
from stseg_dist.methods.common.bins import BinGrid
from stseg_dist.methods.genesegnet.features import gaussian_kernel, kernel_radius, nucleus_centres, rna_map
from stseg_dist.methods.genesegnet.inference import assign_cells, sliding_predict, taper, torch_predictor
from stseg_dist.methods.genesegnet.net import UNet
from stseg_dist.methods.genesegnet.training import Geometry, Patch, load_model, refine, train_genesegnet
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
    for r, c in zip(rows[:-2], cols[:-2]):
        near = (np.abs(yy - r) <= radius) & (np.abs(xx - c) <= radius)  # the kernel's 4-sigma square
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
    assert (px[3:6, 1:4] == labels[1, 1]).all()  # pixels 6..8 (rows) and 6..8 (cols): bin 2 = local 1


def test_unet_shapes():
    net = UNet(width=4).eval()
    out = net(torch.zeros(2, 2, 32, 48))
    assert out.shape == (2, 3, 32, 48)


def test_sliding_merge_has_no_seam():
    """With a pointwise model, many blended windows give exactly what one pass over the array gives."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 50, 70)).astype(np.float32)

    def pointwise(b):
        return np.stack([np.tanh(b[:, 0] * 2 + b[:, 1]), b[:, 0] * b[:, 1]], axis=1)

    merged = sliding_predict(pointwise, x, origin=(5, 13), size=16)
    np.testing.assert_allclose(merged, pointwise(x[None])[0], rtol=1e-5, atol=1e-6)
    t = taper(16)
    np.testing.assert_allclose(t[:8] + t[8:], 1.0, rtol=1e-12)  # copies at half-window steps sum to 1


def test_unet_windows_depend_on_global_position_only():
    """A region predicted inside two differently cut arrays gives the same output away from the cuts."""
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
    lab = assign_cells(prob, offsets, ids, centroids, threshold=0.5, reach_bins=12, tolerance_bins=2)
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
        out.append(Patch(k + 1, stain, rna, nuc, init, cell, np.array([k + 1]), np.array([[cy, cx]])))
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
    b = train_genesegnet(list(reversed(_toy_patches())), NORM, _cfg(max_rounds=1), GEOMETRY)  # order is irrelevant
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
    steady = refine([base], lambda labels: fits.append(labels[0].copy()) or [1.0], lambda: [grown.copy()],
                    max_rounds=5, agree_iou=0.93)
    # round 1 trains on base and predicts grown (IoU 0.44); round 2 trains on grown and agrees (IoU 1)
    assert [h["iou_with_previous"] for h in steady] == pytest.approx([16 / 36, 1.0])
    assert (fits[1] == grown).all()
    flip = iter([grown, base] * 5)
    restless = refine([base], lambda labels: [1.0], lambda: [next(flip).copy()], max_rounds=4, agree_iou=0.93)
    assert len(restless) == 4  # never agree: stops at the round limit


def test_refinement_rounds_in_training():
    """The real loop: a target the first round already meets ends it; an unreachable one runs all rounds."""
    easy = train_genesegnet(_toy_patches(4), NORM, _cfg(epochs=2, max_rounds=3, agree_iou=1e-6), GEOMETRY)
    hard = train_genesegnet(_toy_patches(4), NORM, _cfg(epochs=2, max_rounds=3, agree_iou=1.0), GEOMETRY)
    assert len(easy["history"]) == 1 and len(hard["history"]) == 3
    # the rounds converge: round 1 (2 epochs on the initial labels) predicts cells much larger than
    # those labels (IoU 0.25 seeds 0-2), later rounds train on their own output and agree (0.95-1.0)
    ious = [h["iou_with_previous"] for h in hard["history"]]
    assert ious[0] < 0.5 and ious[0] < ious[1] <= ious[2] and ious[2] > 0.9, ious


@pytest.mark.parametrize("key, value, fragment", [
    ("patch_px", 20, "patch_px"), ("patch_px", 8, "patch_px"), ("bin_um", 0, "bin_um"),
    ("rna_sigma_um", -1, "rna_sigma_um"), ("init_expand_um", -2, "init_expand_um"), ("epochs", 0, "epochs"),
    ("max_rounds", 0, "max_rounds"), ("agree_iou", 1.5, "agree_iou"), ("prob_threshold", 1, "prob_threshold"),
    ("lr", 0, "lr"),
])
def test_bad_config(key, value, fragment):
    from stseg_dist.methods.genesegnet import GeneSegNetMethod

    cfg = load_config(overrides=parse_set([f"cells.genesegnet.{key}={value}"]), use_env=False)
    with pytest.raises(ConfigError, match=f"cells.genesegnet.{fragment}.*{value}"):
        GeneSegNetMethod(cfg)


def test_bad_config_type_names_the_key():
    with pytest.raises(ConfigError, match="cells.genesegnet.epochs"):
        load_config(overrides=parse_set(["cells.genesegnet.epochs=many"]), use_env=False)


# -- through the pipeline ---------------------------------------------------------------------

FAST = ["cells.method=genesegnet", "cells.genesegnet.n_train_patches=16", "cells.genesegnet.epochs=2",
        "cells.genesegnet.max_rounds=2", "cells.genesegnet.patch_px=24", "cells.genesegnet.width=8",
        "runtime.progress=false"]


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    from stseg_dist.synth import synth_chip

    out = tmp_path_factory.mktemp("genesegnet") / "chip"
    synth_chip(str(out), 128, 96, seed=5)
    return str(out)


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
    assert cells.cell_id.is_unique and set(cells.cell_id) <= set(np.unique(nb[nb > 0]))  # cells keep nucleus IDs
    assert int(cells.n_transcripts.sum()) == int((tx.cell_id > 0).sum())
    meta = json.loads((Path(chip) / "chip.json").read_text())
    ps, (x0, y0) = meta["pixel_size_um"], meta.get("origin_um", (0.0, 0.0))
    r = np.clip(np.floor((tx.y.to_numpy() - y0) / ps).astype(int), 0, b.shape[0] - 1)
    c = np.clip(np.floor((tx.x.to_numpy() - x0) / ps).astype(int), 0, b.shape[1] - 1)
    assert (tx.cell_id.to_numpy() == b[r, c]).mean() > 0.999  # the cell under each transcript's pixel
    assert ((nb == 0) | (b == nb)).all()  # nuclei always kept by their cell
    run = json.loads((tmp_path / "many" / "run.json").read_text())
    assert run["status"] == "complete"
