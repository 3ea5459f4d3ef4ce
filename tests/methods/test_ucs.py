"""UCS: the networks, soft masks, labels, training, seamless inference, and the method on a chip."""

import numpy as np
import pytest
import torch

from stseg_dist.config import PipelineConfig, load_config, parse_set
from stseg_dist.errors import ConfigError
from stseg_dist.methods.ucs import inference
from stseg_dist.methods.ucs.features import select_hvg
from stseg_dist.methods.ucs.inference import cell_priors, missing_cell_seeds, predict
from stseg_dist.methods.ucs.nets import ForegroundNet, SparseGeneInput, UCSModel
from stseg_dist.methods.ucs.softmask import softmask
from stseg_dist.methods.ucs.training import (
    IGNORE,
    Patch,
    augment,
    foreground_labels,
    load_model,
    paper_kernel,
    patch_counts,
    train_ucs,
)

torch.set_num_threads(1)


def test_sparse_first_layer_equals_dense_conv1x1():
    torch.manual_seed(0)
    layer = SparseGeneInput(n_genes=7, channels=5)
    rows = torch.tensor([0, 0, 2, 3, 3, 3])
    cols = torch.tensor([1, 1, 0, 4, 4, 2])
    genes = torch.tensor([2, 2, 6, 0, 1, 0])
    out = layer(torch.zeros_like(rows), rows, cols, genes, (1, 4, 5))
    dense = torch.zeros(1, 7, 4, 5)
    for r, c, g in zip(rows, cols, genes, strict=True):
        dense[0, g, r, c] += 1
    conv = torch.nn.Conv2d(7, 5, 1)
    conv.weight.data = layer.embedding.weight.T.reshape(5, 7, 1, 1).clone()
    conv.bias.data = layer.bias.data.clone()
    torch.testing.assert_close(out, conv(dense))


def test_network_shapes():
    model = UCSModel(n_genes=10)
    b = torch.tensor([0, 1])
    r = torch.tensor([3, 4])
    c = torch.tensor([5, 6])
    g = torch.tensor([1, 2])
    logits, feats = model.foreground(b, r, c, g, (2, 48, 48))
    assert logits.shape == (2, 2, 48, 48) and feats.shape == (2, 128, 48, 48)
    out = model.cell(feats[:1], torch.rand(3, 1, 48, 48))
    assert out.shape == (3, 2, 48, 48)  # cells in the batch dimension share the features


def test_softmask_sign_and_elongation():
    m = np.zeros((41, 41), bool)
    m[18:23, 10:31] = True  # an elongated nucleus along the columns
    s = softmask(m, tau=2.0, scaled=True)
    plain = softmask(m, tau=2.0, scaled=False)
    assert (s[m] > 0.5).all() and (s[~m] < 0.5).all()
    # beyond the tips (major axis) the scaled mask reaches further than across (minor axis)
    assert s[20, 34] > plain[20, 34] and s[26, 20] < plain[26, 20]
    round_ = np.zeros((21, 21), bool)
    yy, xx = np.mgrid[:21, :21]
    round_[(yy - 10) ** 2 + (xx - 10) ** 2 <= 16] = True
    np.testing.assert_allclose(softmask(round_, 2.0, True), softmask(round_, 2.0, False))


def test_foreground_labels_constructed():
    nuclei = np.zeros((60, 60), np.int64)
    nuclei[5:9, 5:9] = 3
    counts = np.zeros((60, 60), np.float32)
    counts[50:, 50:] = 5  # a dense patch far from the nucleus: above the mean, so not background
    lab = foreground_labels(nuclei, counts)
    assert (lab[5:9, 5:9] == 1).all()
    assert lab[10, 10] == IGNORE  # within the dilated nuclei
    assert lab[40, 20] == 0 and lab[55, 55] == IGNORE


def test_gaps_between_cells_become_background():
    """Two dense cells 6 bins apart: the sparse gap is background, dense cytoplasm next to a nucleus
    is cell, and dense cytoplasm further out is left to the net.
    """
    nuclei = np.zeros((40, 60), np.int64)
    nuclei[16:24, 8:16], nuclei[16:24, 44:52] = 1, 2
    counts = np.zeros((40, 60), np.float32)
    counts[10:30, 2:27] = 2.0  # cell 1 with its cytoplasm
    counts[10:30, 33:58] = 2.0  # cell 2
    counts[20, 30] = 1.0  # a stray transcript in the gap
    paper = foreground_labels(nuclei, counts)
    assert (paper[:, 28:32] == IGNORE).all()  # too close to nuclei for the paper's rule
    lab = foreground_labels(nuclei, counts, density=0.25)
    assert (lab[12:28, 29:32] == 0).all()  # the gap
    assert (lab[12:28, 20:24] == IGNORE).all()  # dense cytoplasm beyond the ring: unlabelled
    assert (lab[nuclei > 0] == 1).all() and (lab[16:24, 16:19] == 1).all()  # the ring: cell
    sparse = counts.copy()
    sparse[10:30, 2:27] = 0.3  # a cell far sparser than the nuclei on average: its ring is not cell
    assert (foreground_labels(nuclei, sparse, density=0.25)[16:24, 16:19] != 1).all()


def test_select_hvg():
    rng = np.random.default_rng(0)
    n = 5000
    rows, cols = rng.integers(0, 100, n), rng.integers(0, 100, n)
    genes = rng.integers(0, 5, n)  # uniform genes: low dispersion
    clustered = np.where((rows < 20) & (cols < 20))[0]
    genes[clustered] = 7  # gene 7 only in one corner: high dispersion
    keep = select_hvg(rows, cols, genes, n_genes=10, n_hvg=2)
    assert keep[7] and keep.sum() == 2
    assert select_hvg(rows, cols, genes, n_genes=10, n_hvg=50).all()


def _toy_patches(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        nuc = np.zeros((size, size), np.int64)
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.integers(10, 22, 2)
        nuc[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = k + 1
        # transcripts dense within 7 bins of the nucleus, sparse elsewhere
        near = np.argwhere((yy - cy) ** 2 + (xx - cx) ** 2 <= 49)
        pick = near[rng.integers(0, len(near), 300)]
        far = rng.integers(0, size, (20, 2))
        pts = np.concatenate([pick, far])
        out.append(Patch(k + 1, pts[:, 0], pts[:, 1], rng.integers(0, 4, len(pts)), nuc))
    return out


def test_training_learns_and_is_deterministic():
    cfg = PipelineConfig().cells.ucs
    cfg.epochs, cfg.batch_size, cfg.patch_px = 8, 4, 32
    a = train_ucs(_toy_patches(), 4, cfg)
    b = train_ucs(list(reversed(_toy_patches())), 4, cfg)  # order of arrival does not matter
    assert a["history"]["foreground"][-1] < a["history"]["foreground"][0]
    assert a["history"]["cell"][-1] < a["history"]["cell"][0]
    assert a["weights"] == b["weights"]
    model, _ = load_model(a, "cpu")
    assert isinstance(model.foreground, ForegroundNet)


@pytest.mark.parametrize("expression", [False, True])
def test_overlap_tile_inference_is_seamless(expression):
    """Small overlapping patches give exactly what one patch over the whole window gives (with the
    expression profile too: it is taken over each whole nucleus, not per patch).
    """
    from stseg_dist.methods.common.bins import BinGrid, BinnedTile

    cfg = PipelineConfig().cells.ucs
    cfg.epochs, cfg.batch_size, cfg.expression_profile = 2, 4, expression
    model, device = load_model(train_ucs(_toy_patches(), 4, cfg), "cpu")
    assert model.cell.expression == expression
    rng = np.random.default_rng(3)
    nuclei = np.zeros((90, 110), np.int64)
    for k, (cy, cx) in enumerate(rng.integers(8, 80, (12, 2)), start=1):
        nuclei[cy - 2 : cy + 3, cx - 2 : cx + 3] = k
    n = 4000
    binned = BinnedTile(
        BinGrid(1.0, (0, 0), (90, 110), (0, 0)),
        rng.integers(0, 90, n),
        rng.integers(0, 110, n),
        rng.integers(0, 4, n),
        nuclei,
    )
    priors = cell_priors(nuclei, 12, 2.0, True)
    fg_a, lab_a = predict(model, device, binned, priors, patch=1000)
    fg_b, lab_b = predict(model, device, binned, priors, patch=23)
    np.testing.assert_allclose(fg_a, fg_b, atol=1e-5)
    assert (lab_a != lab_b).mean() < 1e-3
    assert set(np.unique(lab_a)) <= set(np.unique(nuclei))


def test_empty_field_foreground_is_what_the_net_says_without_transcripts():
    """The trained net's p on bins with no transcript in reach equals the constant the evidence
    gate compares against; it is recorded with the weights, and the gate never rises above it.
    """
    from stseg_dist.methods.common.bins import BinGrid, BinnedTile
    from stseg_dist.methods.ucs import UCSMethod

    cfg = PipelineConfig().cells.ucs
    cfg.epochs, cfg.batch_size = 2, 4
    state = train_ucs(_toy_patches(), 4, cfg)
    model, device = load_model(state, "cpu")
    rng = np.random.default_rng(1)
    n = 300  # transcripts in the top-left corner only
    binned = BinnedTile(
        BinGrid(1.0, (0, 0), (60, 60), (0, 0)),
        rng.integers(0, 15, n),
        rng.integers(0, 15, n),
        rng.integers(0, 4, n),
        np.zeros((60, 60), np.int64),
    )
    fg, _ = inference.foreground_pass(model, device, binned, patch=17)
    empty = inference.empty_field_foreground(model, device)
    r = model.foreground.receptive_radius  # bins nearer the window's edge see its zero padding
    far = fg[15 + r : -r, 15 + r : -r]
    np.testing.assert_allclose(far, empty, atol=1e-6)
    assert state["empty_field_foreground"] == pytest.approx(empty, abs=1e-6)
    config = load_config(
        overrides=parse_set(
            [
                "cells.method=ucs",
                "cells.ucs.foreground_gate=evidence",
                "cells.ucs.foreground_threshold=0.5",
            ]
        ),
        use_env=False,
    )
    method = UCSMethod(config)
    method.load({"train": state, "bin_um": 1.0, "hvg": None})
    assert method.fg_threshold == pytest.approx(min(0.5, empty))


def test_growth_limits_how_far_a_cell_may_claim():
    from stseg_dist.methods.ucs.softmask import signed_distance

    nuclei = np.zeros((60, 60), np.int64)
    nuclei[28:33, 28:33] = 1
    (free,) = cell_priors(nuclei, 20, 3.0, False)
    (capped,) = cell_priors(nuclei, 20, 3.0, False, growth_bins=6)
    sd = signed_distance(nuclei[capped.box[0] : capped.box[1], capped.box[2] : capped.box[3]] == 1)
    assert (free.mask > 0).all()  # without a cap the whole box is in reach
    assert (capped.mask[sd >= -6] > 0).all() and (capped.mask[sd < -6.01] == 0).all()
    np.testing.assert_array_equal(capped.mask[sd >= -6], free.mask[sd >= -6])


def test_missing_cell_search_sees_a_speckled_cell_body_through_smoothing():
    """A cell body the net calls cell only on average (confident and unsure bins interleaved, as a
    real net does in sparse tissue) is one seed once the foreground is smoothed, and none without:
    the opening breaks it into specks. The density rule still refuses an equally confident but
    sparse region.
    """
    fg = np.full((60, 60), 0.1, np.float32)
    counts = np.zeros((60, 60))
    body = np.zeros((60, 60), bool)
    body[10:30, 10:30] = True
    speckle = np.add.outer(np.arange(60), np.arange(60)) % 2 == 0
    fg[body] = np.where(speckle[body], 0.99, 0.8)
    counts[body] = 1.0  # dense: a cell's worth of transcripts
    fg[35:55, 35:55] = np.where(speckle[35:55, 35:55], 0.99, 0.8)
    counts[35:55, 35:55] = 0.05  # as confident, but as sparse as the background
    none = np.zeros((60, 60), np.int64)
    kw = dict(threshold=0.85, min_area=50, counts=counts, min_density=0.5)
    assert missing_cell_seeds(fg, none, none, **kw).max() == 0
    seeds = missing_cell_seeds(fg, none, none, smooth_bins=2.0, **kw)
    assert seeds.max() == 1
    # the seed is the body's core (smoothing blurs its rim below the threshold); growth restores it
    assert (seeds[body] == 1).sum() >= 150 and not seeds[~body].any()


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("patch_px", 4, "patch_px"),
        ("tau", 0, "tau"),
        ("bin_um", -1, "bin_um"),
        ("missing_cell_threshold", 1.5, "missing_cell_threshold"),
        ("epochs", 0, "epochs"),
        ("markers", "/nonexistent/markers.csv", "file not found"),
        ("background_density", 1.5, "background_density"),
        ("background_density", 0, "background_density"),
        ("background_sigma_um", 0, "background_sigma_um"),
        ("growth_um", -2, "growth_um"),
        ("foreground_threshold", 1.0, "foreground_threshold"),
        ("variant", "published", "variant"),
        ("foreground_labels", "dense", "foreground_labels"),
        ("expression_weight", -1, "expression_weight"),
        ("missing_cell_density", 1.5, "missing_cell_density"),
        ("missing_cell_smoothing_um", -1, "missing_cell_smoothing_um"),
        ("plateau_patience", -1, "plateau_patience"),
        ("plateau_tol", 1.0, "plateau_tol"),
        ("foreground_gate", "soft", "foreground_gate"),
        ("coverage", 1.5, "coverage"),
    ],
)
def test_bad_config(key, value, fragment):
    from stseg_dist.methods.ucs import UCSMethod

    cfg = load_config(overrides=parse_set([f"cells.ucs.{key}={value}"]), use_env=False)
    with pytest.raises(ConfigError, match=fragment):
        UCSMethod(cfg)


def test_training_stops_on_a_loss_plateau():
    """A network stops once its last epochs no longer improve its best loss by the tolerance."""
    from stseg_dist.methods.common.torch_model import plateaued

    assert not plateaued([1.0, 0.8, 0.6, 0.5], 3, 0.01)  # still falling
    assert plateaued([1.0, 0.5, 0.499, 0.498, 0.497], 3, 0.01)  # three epochs within 1% of 0.5
    assert not plateaued([1.0, 0.5, 0.499, 0.498, 0.40], 3, 0.01)  # a late drop counts
    assert not plateaued([1.0, 0.5, 0.5, 0.5, 0.5], 0, 0.01)  # patience 0: the full epochs
    assert not plateaued([1.0, 1.0], 3, 0.01)  # too few epochs to tell


def test_marker_table_columns(tmp_path):
    from stseg_dist.methods.ucs.method import load_markers

    bad = tmp_path / "m.csv"
    bad.write_text("type,marker\nT,CD3E\n")
    with pytest.raises(ConfigError, match="cell_type and gene"):
        load_markers(str(bad))
    good = tmp_path / "g.tsv"
    good.write_text("cell_type\tgene\nT\tCD3E\nB\tMS4A1\n")
    assert load_markers(str(good)).gene.tolist() == ["CD3E", "MS4A1"]


def test_marker_masks_reach_the_cell_net_at_inference(monkeypatch):
    """A model trained with marker masks gets each cell's marker mask at inference too."""
    from stseg_dist.methods.common.bins import BinGrid, BinnedTile
    from stseg_dist.methods.ucs.features import cell_marker_mask, marker_grid

    lut = np.array([0, 1, 2, 0])  # genes 1 and 2 mark types 1 and 2
    patches = _toy_patches()
    for p in patches:
        p.markers = marker_grid(p.rows, p.cols, p.genes, lut, p.nuclei.shape)
    cfg = PipelineConfig().cells.ucs
    cfg.epochs, cfg.batch_size = 2, 4
    model, device = load_model(train_ucs(patches, 4, cfg, markers=True), "cpu")
    assert model.cell.markers
    rng = np.random.default_rng(5)
    nuclei = np.zeros((40, 40), np.int64)
    nuclei[8:13, 8:13], nuclei[25:30, 25:30] = 1, 2
    n = 1500
    rows, cols, genes = rng.integers(0, 40, n), rng.integers(0, 40, n), rng.integers(0, 4, n)
    binned = BinnedTile(BinGrid(1.0, (0, 0), (40, 40), (0, 0)), rows, cols, genes, nuclei)
    markers = marker_grid(rows, cols, genes, lut, (40, 40))
    seen = []
    classify = inference._classify_cells

    def spy(cell_net, reduced, priors, marker_masks=None, *args):
        seen.append(marker_masks)
        return classify(cell_net, reduced, priors, marker_masks, *args)

    monkeypatch.setattr(inference, "_classify_cells", spy)
    priors = cell_priors(nuclei, 10, 2.0, True)
    predict(model, device, binned, priors, markers=markers)
    got = seen[-1]
    assert sorted(got) == [1, 2] and got[1].sum() > 0
    expect = cell_marker_mask(
        markers[priors[0].box[0] : priors[0].box[1], priors[0].box[2] : priors[0].box[3]],
        priors[0].mask > 0.5,
    )
    np.testing.assert_array_equal(got[1], expect)
    predict(model, device, binned, priors)  # without a marker grid the channel is empty
    assert seen[-1] is None


@pytest.mark.parametrize("expression,markers", [(False, False), (True, True)])
def test_cells_scored_on_their_box_equal_the_head_run_over_the_window(expression, markers):
    """Each cell is scored over its own box from the head's weights; that must equal running the
    cell net's head over the whole window for every cell, as the paper's network does.
    """
    import torch

    torch.manual_seed(0)
    model = UCSModel(4, markers=markers, expression=expression).eval()
    rng = np.random.default_rng(1)
    nuclei = np.zeros((50, 60), np.int64)
    nuclei[8:14, 8:14], nuclei[20:27, 18:24], nuclei[35:40, 40:47] = 3, 5, 9
    priors = cell_priors(nuclei, 12, 3.0, True)
    reduced = rng.normal(size=(model.cell.channels, 50, 60)).astype(np.float32)
    mks = (
        {p.cell_id: (rng.random(p.mask.shape) < 0.3).astype(np.float32) for p in priors}
        if markers
        else None
    )
    _, n_cover, best_q, best_id = inference._classify_cells(model.cell, reduced, priors, mks)
    qs, scores, covers = [], [], []
    with torch.no_grad():
        for p in priors:
            r0, r1, c0, c1 = p.box
            sm, mk = torch.zeros(1, 1, 50, 60), torch.zeros(1, 1, 50, 60)
            sm[0, 0, r0:r1, c0:c1] = torch.as_tensor(p.mask)
            if mks is not None:
                mk[0, 0, r0:r1, c0:c1] = torch.as_tensor(mks[p.cell_id])
            red = torch.as_tensor(reduced)[None]
            logits = model.cell.classify(red, sm, mk if markers else None)
            q = torch.softmax(logits, 1)[0, 1].numpy() * (sm[0, 0].numpy() > 0)
            qs.append(q)
            covers.append(sm[0, 0].numpy() > 0)
            scores.append(np.where(sm[0, 0].numpy() > 0, q * sm[0, 0].numpy(), -np.inf))
    covered = n_cover > 0
    k = np.argmax(np.stack(scores), 0)
    ids = np.array([p.cell_id for p in priors])
    np.testing.assert_array_equal(best_id[covered], ids[k][covered])
    np.testing.assert_allclose(
        best_q[covered], np.take_along_axis(np.stack(qs), k[None], 0)[0][covered], atol=1e-5
    )
    np.testing.assert_array_equal(n_cover, np.sum(covers, 0))


def test_paper_variant_has_the_reference_network_size():
    """The public UCS code's layer sizes: 1x1 G->256->128->64, double blocks 128/256/128/64 whose
    outputs and input are concatenated (640), head 640->256->128->64->2, cell branch 64->32->16->1.
    """
    model = UCSModel(n_genes=313, variant="paper")
    fg, cell = model.foreground, model.cell
    assert fg.input.embedding.weight.shape == (313, 256)
    assert [m.out_channels for m in fg.extract] == [128, 64]
    assert [blk[0].out_channels for blk in fg.encoder] == [128, 256, 128, 64]
    assert all(len(blk) == 4 for blk in fg.encoder)  # two 3x3 convolutions each, no batch norm
    assert fg.head[0].in_channels == 640 and [m.out_channels for m in fg.head] == [256, 128, 64]
    assert fg.out.out_channels == 2 and fg.receptive_radius == 8
    convs = [m for m in cell.reduce if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(64, 32), (32, 16), (16, 1)]
    b = torch.tensor([0])
    r = torch.tensor([3])
    c = torch.tensor([5])
    g = torch.tensor([1])
    logits, feats = fg(b, r, c, g, (1, 24, 24))
    assert logits.shape == (1, 2, 24, 24) and feats.shape == (1, 64, 24, 24)
    assert cell(feats, torch.rand(3, 1, 24, 24)).shape == (3, 2, 24, 24)


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_moves_transcripts_with_the_nuclei(k, flip):
    rng = np.random.default_rng(k)
    nuclei = np.zeros((16, 16), np.int64)
    nuclei[2:6, 9:14] = 4
    p = Patch(1, rng.integers(0, 16, 50), rng.integers(0, 16, 50), rng.integers(0, 3, 50), nuclei)
    q = augment(p, k, flip)
    expected = patch_counts(p)
    nuc = nuclei
    if flip:
        expected, nuc = expected[::-1], nuc[::-1]
    np.testing.assert_array_equal(patch_counts(q), np.rot90(expected, k))
    np.testing.assert_array_equal(q.nuclei, np.rot90(nuc, k))
    np.testing.assert_array_equal(q.genes, p.genes)


def test_paper_foreground_labels_use_the_elliptical_kernel():
    kernel = paper_kernel()
    assert (
        kernel.shape == (10, 10)
        and not kernel[0, 0]
        and kernel[0, 4]
        and kernel[4, 0]
        and kernel.sum() < 100
    )
    nuclei = np.zeros((80, 80), np.int64)
    nuclei[38:42, 38:42] = 1
    counts = np.zeros((80, 80), np.float32)
    lab = foreground_labels(nuclei, counts, 4, None, 1.0, 2, 3, kernel)
    square = foreground_labels(nuclei, counts, 4)
    assert (lab[nuclei > 0] == 1).all()
    assert (lab == 0).sum() > (
        square == 0
    ).sum()  # the ellipse reaches less far along the diagonals
    assert lab[2, 2] == 0 and lab[40, 26] == IGNORE


def test_paper_inference_rule_is_argmax_over_background_and_cells():
    """Eq. 5-6: background = mean over the cells of 1 - q_c, each bin the argmax; no foreground
    gate, cells compared by q alone.
    """
    from stseg_dist.methods.common.bins import BinGrid, BinnedTile

    cfg = PipelineConfig().cells.ucs
    cfg.epochs, cfg.batch_size, cfg.variant = 2, 4, "paper"
    model, device = load_model(train_ucs(_toy_patches(), 4, cfg), "cpu")
    assert model.foreground.receptive_radius == 8
    rng = np.random.default_rng(5)
    nuclei = np.zeros((40, 40), np.int64)
    nuclei[8:13, 8:13], nuclei[25:30, 20:25] = 1, 2
    n = 600
    binned = BinnedTile(
        BinGrid(1.0, (0, 0), (40, 40), (0, 0)),
        rng.integers(0, 40, n),
        rng.integers(0, 40, n),
        rng.integers(0, 4, n),
        nuclei,
    )
    priors = cell_priors(nuclei, 60, 5.0, True)  # every cell covers the whole window
    fg, labels = predict(model, device, binned, priors, fg_threshold=None, prior_weighted=False)
    with torch.no_grad():
        t = lambda a: torch.as_tensor(a)  # noqa: E731
        _, feats = model.foreground(
            torch.zeros(n, dtype=torch.long),
            t(binned.rows),
            t(binned.cols),
            t(binned.genes),
            (1, 40, 40),
        )
        sm = torch.stack([t(p.mask) for p in priors])[:, None]
        q = torch.softmax(model.cell(feats, sm), 1)[:, 1].numpy()
    probs = np.concatenate([(1 - q).mean(0, keepdims=True), q])
    expected = np.array([0, priors[0].cell_id, priors[1].cell_id])[probs.argmax(0)]
    assert (labels == expected).mean() > 0.999
    assert (labels > 0).any() and (labels == 0).any()


def test_expression_evidence_gives_a_contested_bin_to_the_nucleus_expressing_it():
    """Two nuclei of different programs; the transcripts between them are of the right one's genes:
    by distance alone the left cell takes the nearer half, with the evidence the right cell takes
    it.
    """
    from stseg_dist.methods.common.bins import BinGrid, BinnedTile
    from stseg_dist.methods.ucs.inference import expression_evidence

    nuclei = np.zeros((20, 44), np.int64)
    nuclei[8:12, 8:12], nuclei[8:12, 32:36] = 1, 2
    rng = np.random.default_rng(0)
    pts = [
        (r, c, 0) for r in range(8, 12) for c in range(8, 12) for _ in range(3)
    ]  # nucleus 1: gene 0
    pts += [
        (r, c, 1) for r in range(8, 12) for c in range(32, 36) for _ in range(3)
    ]  # nucleus 2: gene 1
    pts += [
        (int(r), int(c), 1)
        for r, c in zip(rng.integers(8, 12, 80), rng.integers(13, 31, 80), strict=True)
    ]  # the gap: gene 1
    rows, cols, genes = (np.array(v) for v in zip(*pts, strict=True))
    grid = BinGrid(1.0, (0, 0), nuclei.shape, (0, 0))
    binned = BinnedTile(grid, rows, cols, genes, nuclei)
    priors = cell_priors(nuclei, 24, 3.0, False)
    freq = np.array([0.5, 0.5])
    ev = expression_evidence(binned, priors, freq, sigma=1.5)
    one, two = (ev[p.cell_id] for p in priors)
    b1, b2 = priors[0].box, priors[1].box
    assert (
        one[10 - b1[0], 10 - b1[2]] > 0 and two[10 - b2[0], 34 - b2[2]] > 0
    )  # own genes support each
    # a gap bin nearer nucleus 1: its gene-1 transcripts support cell 2 and count against cell 1
    assert one[10 - b1[0], 17 - b1[2]] < 0 < two[10 - b2[0], 17 - b2[2]]
    # a nucleus with no transcripts gets no evidence either way
    empty = expression_evidence(
        BinnedTile(grid, rows[:0], cols[:0], genes[:0], nuclei), priors, freq, sigma=1.5
    )
    assert all((v == 0).all() for v in empty.values())


def test_chip_densities_add_up_across_tiles_exactly(tmp_path):
    """density_counts over any tiling sums to the one-tile figures: each bin counted once."""
    import pandas as pd

    from stseg_dist.io.chip import open_chip
    from stseg_dist.methods.common.bins import bin_tile
    from stseg_dist.methods.ucs.method import density_counts
    from stseg_dist.tiledata import load_tile_data
    from stseg_dist.tiling import make_grid
    from tests.conftest import make_blob_chip

    url = make_blob_chip(tmp_path / "chip", n_transcripts=3000)
    chip = open_chip(url)
    genes = sorted(pd.read_parquet(f"{url}/transcripts.parquet").gene.astype(str).unique())
    nuclei = np.zeros(chip.shape_yx, np.uint32)
    nuclei[20:30, 20:30], nuclei[60:70, 90:100] = 1, 2

    def total(tile_um, halo_um):
        out = 0
        for t in make_grid(chip.shape_yx, chip.pixel_size_um, tile_um, halo_um, 16):
            r0, r1, c0, c1 = t.window
            data = load_tile_data(chip, t, genes, nuclei[r0:r1, c0:c1])[0]
            out = out + density_counts(bin_tile(data, 1.0), data, 10.0)
        return out

    one = total(10_000.0, 0.0)
    assert one[1] > 0 and one[3] == 50 and one[4] == 120 * 160  # two 5 x 5 µm nuclei; all bins
    np.testing.assert_array_equal(total(16.0, 24.0), one)
    from stseg_dist.methods.ucs.method import chip_background

    low, high = chip_background(one, 1.5)
    assert low == one[0] / one[1] < high
    assert (
        chip_background(np.concatenate([one[:4], [1e7]]), 1.5) is None
    )  # too few far bins for the chip


def test_coverage_resolves_to_the_distance_holding_that_share(tmp_path):
    """cells.ucs.coverage: the transcripts' distances to the nearest nucleus add up over any
    tiling to the one-tile histogram, and the growth it resolves holds that share of them.
    """
    import pandas as pd

    from stseg_dist.io.chip import open_chip
    from stseg_dist.methods.ucs.method import growth_for_coverage, nucleus_distance_histogram
    from stseg_dist.tiledata import load_tile_data
    from stseg_dist.tiling import make_grid
    from tests.conftest import make_blob_chip

    url = make_blob_chip(tmp_path / "chip", n_transcripts=3000)
    chip = open_chip(url)
    tx = pd.read_parquet(f"{url}/transcripts.parquet")
    genes = sorted(tx.gene.astype(str).unique())
    nuclei = np.zeros(chip.shape_yx, np.uint32)
    nuclei[20:30, 20:30], nuclei[60:70, 90:100] = 1, 2

    def total(tile_um, halo_um):
        out = 0
        for t in make_grid(chip.shape_yx, chip.pixel_size_um, tile_um, halo_um, 16):
            r0, r1, c0, c1 = t.window
            data = load_tile_data(chip, t, genes, nuclei[r0:r1, c0:c1])[0]
            out = out + nucleus_distance_histogram(data, 10.0)
        return out

    one = total(10_000.0, 0.0)
    assert one.sum() == len(tx)
    np.testing.assert_array_equal(total(16.0, 24.0), one)
    growth = growth_for_coverage(one, 0.05)  # 7% lie within the 10 µm reach
    # the same share by brute force: distance of each transcript's pixel to the nearest nucleus
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(nuclei == 0, sampling=chip.pixel_size_um)
    px = chip.pixel_size_um
    d = dist[
        (tx.y / px).astype(int).clip(0, nuclei.shape[0] - 1),
        (tx.x / px).astype(int).clip(0, nuclei.shape[1] - 1),
    ]
    assert (d <= growth + 1e-9).mean() >= 0.05 > (d <= growth - 0.1 - 1e-9).mean()
    assert growth_for_coverage(one, 0.5) == 10.0  # never past the reach


def test_coverage_relaxes_the_gate_in_step():
    """At the share the default growth holds the gate is as set; towards every transcript, none."""
    from stseg_dist.methods.ucs.method import DISTANCE_STEP_UM, resolve_coverage

    hist = np.zeros(int(10 / DISTANCE_STEP_UM) + 2, np.int64)
    hist[0], hist[int(2 / DISTANCE_STEP_UM)], hist[int(8 / DISTANCE_STEP_UM)] = 60, 20, 20
    # 80% of transcripts lie within the default growth of 5 µm
    assert resolve_coverage(hist, 0.8, 5.0) == (pytest.approx(2.0), 1.0)
    assert resolve_coverage(hist, 0.9, 5.0) == (pytest.approx(8.0), pytest.approx(0.5))
    assert resolve_coverage(hist, 1.0, 5.0) == (pytest.approx(8.0), 0.0)
    assert resolve_coverage(hist, 0.5, 5.0)[1] == 1.0  # never tighter than set
