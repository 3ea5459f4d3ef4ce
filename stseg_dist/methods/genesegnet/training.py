"""GeneSegNet training on the chip itself, with recursive label refinement.

There is no ground truth: round 1 trains on nuclei expanded by a fixed distance; each later
round trains on the previous round's post-processed predictions over the same patches (which
follow the RNA and the stain rather than a fixed radius), until two consecutive rounds' labels
agree (mean per-cell IoU above ``agree_iou``) or ``max_rounds`` is reached. The network keeps
its weights across rounds, so each round refines rather than restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..common.torch_model import fit_epochs, load_weights, train_on_device, weights_to_bytes
from .features import normalise_inputs
from .inference import assign_cells, assign_to_centres, mean_cell_iou


@dataclass
class Patch:
    """One training patch on the bin grid, keyed by the nucleus it is centred on."""

    key: int  # global nucleus ID: sorting by it makes training independent of the tiling
    stain: np.ndarray  # (P, P) float32 block-mean stain, raw
    rna: np.ndarray  # (P, P) float32 RNA location map, raw
    nuclei: np.ndarray  # (P, P) int64 global nucleus IDs
    init_labels: np.ndarray  # (P, P) int64 nuclei expanded by the initial distance
    far_labels: np.ndarray  # (P, P) int64 nuclei expanded by half a cell diameter
    ids: np.ndarray  # (n,) IDs of the nuclei whose centre is within reach of the patch
    centroids: np.ndarray  # (n, 2) their centres, patch-relative bin units


@dataclass
class Geometry:
    """Distances in bins used to build targets and to read predictions."""

    offset_scale: float  # offsets are predicted divided by this (the cell reach)
    reach: float  # a bin joins only a nucleus at most this far
    tolerance: float  # how near a nucleus centre an offset must land
    centre_sigma: float = 1.5  # the centre map target's Gaussian, in bins


@dataclass(frozen=True)
class Parts:
    """Which of the paper's parts a run uses (``variant: paper`` less its switched-off parts)."""

    centre: bool = False  # centre map head and centre-matched assignment
    centre_threshold: float = 0.3
    centre_fallback: bool = True
    level_set: str = "none"  # chan_vese | geodesic | none
    level_set_iters: int = 10
    augment: str = "flip"  # scale_rotate_crop | flip
    scale: tuple = (1.0, 1.0)
    net: str = "unet3"  # resunet4 | unet3
    rna_clip: float | None = None  # the paper's clipped RNA map (None: log1p of the chip mean)

    @property
    def n_maps(self) -> int:
        return 2 if self.centre else 1

    @classmethod
    def of(cls, cfg) -> Parts:
        if getattr(cfg, "variant", "stseg") != "paper":
            return cls()
        return cls(
            centre=cfg.centre_map,
            centre_threshold=cfg.centre_threshold,
            centre_fallback=cfg.centre_fallback,
            level_set=cfg.level_set,
            level_set_iters=cfg.level_set_iters,
            augment=cfg.augment,
            scale=(cfg.scale_min, cfg.scale_max),
            net=cfg.net,
            rna_clip=cfg.rna_clip,
        )

    def to_dict(self) -> dict:
        return {"centre": self.centre, "net": self.net}


#: Label of bins left out of the loss: neither a cell nor background is known there.
IGNORE = -1


#: RNA-rich bins: the RNA map above this fraction of the chip mean (in tissue the cytoplasm is
#: mostly above the mean, gaps between cells far below it).
RICH_RNA = 0.5


def initial_labels(p: Patch, rna_mean: float) -> np.ndarray:
    """Round-1 labels: nuclei expanded by the initial distance, plus the RNA-rich bins up to half
    a cell diameter away (each to its nearest nucleus); RNA-poor bins there are background.
    """
    rich = p.rna >= RICH_RNA * rna_mean
    return np.where(p.init_labels > 0, p.init_labels, np.where(rich, p.far_labels, 0))


def centre_target(shape: tuple[int, int], centroids: np.ndarray, sigma: float) -> np.ndarray:
    """The centre map's target: the largest of the Gaussians of ``sigma`` bins at each centre."""
    out = np.zeros(shape, np.float32)
    if not len(centroids):
        return out
    rr, cc = np.mgrid[: shape[0], : shape[1]] + 0.5
    for cy, cx in centroids:
        np.maximum(out, np.exp(-((rr - cy) ** 2 + (cc - cx) ** 2) / (2 * sigma**2)), out=out)
    return out


def targets(
    labels: np.ndarray, p: Patch, offset_scale: float, centre_sigma: float | None = None
) -> np.ndarray:
    """(6, P, P): cell mask, row and column offset to the nucleus centre (scaled), offset weight,
    cell-mask weight (0 on :data:`IGNORE` bins), centre map (zero unless ``centre_sigma``).
    """
    out = np.zeros((6, *labels.shape), np.float32)
    out[4] = labels != IGNORE
    if centre_sigma:
        out[5] = centre_target(labels.shape, p.centroids, centre_sigma)
    cell = labels > 0
    if not cell.any():
        return out
    out[0][cell] = 1.0
    rr, cc = np.nonzero(cell)
    lab = labels[rr, cc]
    pos = np.minimum(np.searchsorted(p.ids, lab), max(len(p.ids) - 1, 0))
    known = (p.ids[pos] == lab) if len(p.ids) else np.zeros(len(lab), bool)
    rr, cc, pos = (
        rr[known],
        cc[known],
        pos[known],
    )  # a cell whose centre is unknown teaches no offset
    out[1, rr, cc] = (p.centroids[pos, 0] - (rr + 0.5)) / offset_scale
    out[2, rr, cc] = (p.centroids[pos, 1] - (cc + 0.5)) / offset_scale
    out[3, rr, cc] = 1.0
    return out


def refine(
    labels: list[np.ndarray],
    fit: Callable[[list[np.ndarray]], list[float]],
    relabel: Callable[[], list[np.ndarray]],
    max_rounds: int,
    agree_iou: float,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """The recursive loop: fit on labels, relabel from the fit, stop once two rounds agree.

    ``fit`` returns its per-epoch losses; the history keeps them with each round's IoU.
    """
    history = []
    for k in range(1, max_rounds + 1):
        losses = [float(v) for v in fit(labels)]
        new = relabel()
        iou = mean_cell_iou(labels, new)
        history.append(
            {
                "round": k,
                "loss": losses[-1] if losses else float("nan"),
                "epoch_losses": losses,
                "iou_with_previous": iou,
            }
        )
        if log:
            log(
                f"GeneSegNet round {k}: loss {history[-1]['loss']:.4f}, mean cell IoU with its "
                f"labels {iou:.3f}"
            )
        if iou > agree_iou:
            break
        labels = new
    return history


def train_genesegnet(
    patches: list[Patch],
    norm: dict,
    cfg,
    geometry: Geometry,
    *,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train the U-Net with label refinement; return a picklable state with the weights as bytes."""
    if not patches:
        raise ValueError("GeneSegNet training needs at least one patch with a nucleus")
    return train_on_device(_train, patches, norm, cfg, geometry, device=device, log=log)


def _train(patches, norm, cfg, geometry, *, device: str, log) -> dict:
    import torch

    from .net import build_net

    parts = Parts.of(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    patches = sorted(patches, key=lambda p: p.key)
    x = torch.as_tensor(
        np.stack([normalise_inputs(p.stain, p.rna, norm) for p in patches]), device=device
    )
    n_out = parts.n_maps + 2
    model = build_net(parts.net, cfg.width, n_out).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    m = parts.n_maps

    def fit(labels: list[np.ndarray]) -> list[float]:
        sigma = geometry.centre_sigma if parts.centre else None
        y = torch.as_tensor(
            np.stack(
                [
                    targets(lab, p, geometry.offset_scale, sigma)
                    for lab, p in zip(labels, patches, strict=False)
                ]
            ),
            device=device,
        )

        def batch_loss(order: np.ndarray):
            idx = torch.as_tensor(order, device=device)
            xb, yb = x[idx], y[idx]
            if parts.augment == "scale_rotate_crop":
                xb, yb = scale_rotate_crop(xb, yb, rng, parts.scale)
            xb, yb = _flip(xb, yb, rng)
            out = model(xb)
            mask, known = yb[:, 3:4], yb[:, 4:5]
            off = ((out[:, m : m + 2] - yb[:, 1:3]) ** 2 * mask).sum() / (2 * mask.sum()).clamp(
                min=1.0
            )
            cell = (bce(out[:, :1], yb[:, :1]) * known).sum() / known.sum().clamp(min=1.0)
            if parts.centre:
                cell = cell + (bce(out[:, 1:2], yb[:, 5:6]) * known).sum() / known.sum().clamp(
                    min=1.0
                )
            return cell + off

        model.train()
        return list(
            fit_epochs(opt, rng, len(patches), cfg.epochs, cfg.batch_size, batch_loss)[:, 0]
        )

    def relabel() -> list[np.ndarray]:
        return predict_patch_labels(
            model, device, x, patches, geometry, cfg.prob_threshold, cfg.batch_size, parts
        )

    first = [initial_labels(p, norm["rna_mean"]) for p in patches]
    history = refine(first, fit, relabel, cfg.max_rounds, cfg.agree_iou, log)
    return {
        "weights": weights_to_bytes(model),
        "width": cfg.width,
        "history": history,
        "n_patches": len(patches),
        "device": str(device),
        "net": parts.net,
        "n_outputs": n_out,
    }


def predict_patch_labels(
    model,
    device,
    x,
    patches: list[Patch],
    geometry: Geometry,
    threshold: float,
    batch_size: int,
    parts: Parts = Parts(),
) -> list[np.ndarray]:
    """Post-processed predictions on the training patches: the next round's labels (the paper
    variant: each mask then refined by a level set).
    """
    import torch

    model.eval()
    out = []
    m = parts.n_maps
    with torch.no_grad():
        for s in range(0, len(patches), batch_size):
            y = model(x[s : s + batch_size])
            maps = torch.sigmoid(y[:, :m]).cpu().numpy()
            offs = (y[:, m:] * geometry.offset_scale).cpu().numpy()
            rna = x[s : s + batch_size, 1].cpu().numpy()
            for k, p in enumerate(patches[s : s + batch_size]):
                prob = maps[k, 0]
                if parts.centre:
                    lab = assign_to_centres(
                        prob,
                        maps[k, 1],
                        offs[k],
                        p.ids,
                        p.centroids,
                        threshold,
                        geometry.reach,
                        geometry.tolerance,
                        parts.centre_threshold,
                        parts.centre_fallback,
                    )
                else:
                    lab = assign_cells(
                        prob,
                        offs[k],
                        p.ids,
                        p.centroids,
                        threshold,
                        geometry.reach,
                        geometry.tolerance,
                    )
                if parts.level_set != "none":
                    image = 0.5 * (prob + np.clip(rna[k], 0.0, 1.0))
                    lab = level_set_refine(
                        lab, image, p, geometry.reach, parts.level_set, parts.level_set_iters
                    )
                # confident bins that land on no nucleus are left out of the next round's loss
                lab = np.where((lab == 0) & (prob >= threshold), IGNORE, lab)
                out.append(np.where(p.nuclei > 0, p.nuclei, lab))
    return out


#: Bins of context around each mask given to its level set.
LEVEL_SET_PAD = 3


def level_set_refine(
    labels: np.ndarray, image: np.ndarray, p: Patch, reach: float, method: str, iters: int
) -> np.ndarray:
    """Refine each cell's mask by a morphological level set started from it (scikit-image's
    Chan-Vese, or geodesic active contour on the inverse gradient), on ``image`` (the mean of
    the cell probability and the clipped RNA map). A mask gains only bins no other cell holds,
    within ``reach`` of its nucleus centre; masks are refined in ID order on the same input.
    """
    from skimage.segmentation import (
        inverse_gaussian_gradient,
        morphological_chan_vese,
        morphological_geodesic_active_contour,
    )

    out = labels.copy()
    h, w = labels.shape
    rr, cc = np.mgrid[:h, :w] + 0.5
    for cid in np.unique(labels[labels > 0]):
        m = labels == cid
        r, c = np.nonzero(m)
        r0, r1 = max(r.min() - LEVEL_SET_PAD, 0), min(r.max() + LEVEL_SET_PAD + 1, h)
        c0, c1 = max(c.min() - LEVEL_SET_PAD, 0), min(c.max() + LEVEL_SET_PAD + 1, w)
        sub, init = image[r0:r1, c0:c1].astype(np.float64), m[r0:r1, c0:c1]
        if method == "chan_vese":
            ref = morphological_chan_vese(
                sub, iters, init_level_set=init.astype(np.int8), smoothing=1
            )
        else:
            ref = morphological_geodesic_active_contour(
                inverse_gaussian_gradient(sub),
                iters,
                init_level_set=init.astype(np.int8),
                smoothing=1,
                balloon=0,
            )
        ref = ref.astype(bool)
        view, orig = out[r0:r1, c0:c1], labels[r0:r1, c0:c1]
        view[init & ~ref & (view == cid)] = 0
        k = int(np.searchsorted(p.ids, cid))
        near = np.ones_like(ref)
        if k < len(p.ids) and p.ids[k] == cid:
            cy, cx = p.centroids[k]
            near = np.hypot(rr[r0:r1, c0:c1] - cy, cc[r0:r1, c0:c1] - cx) <= reach
        view[ref & ~init & (orig <= 0) & (view <= 0) & near] = cid
    return out


def scale_rotate_crop(x, y, rng: np.random.Generator, scale: tuple[float, float]):
    """The paper's augmentation: each patch rotated by a random angle, zoomed by a factor in
    ``scale`` and shifted by up to 1/8 of its side (a random crop), inputs bilinear, targets
    nearest; bins brought in from outside are zero with zero weight. Offsets are turned and
    scaled with the patch, so they still point at their (moved) centres.
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    theta = torch.as_tensor(rng.uniform(0, 2 * np.pi, b), dtype=x.dtype, device=x.device)
    s = torch.as_tensor(
        np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), b)), dtype=x.dtype, device=x.device
    )
    t = torch.as_tensor(rng.uniform(-0.25, 0.25, (b, 2)), dtype=x.dtype, device=x.device)
    c, sn = torch.cos(theta), torch.sin(theta)
    # output (x, y) -> input (x, y), normalised coordinates: R(theta) / s, then the shift
    a = torch.stack(
        [torch.stack([c / s, -sn / s, t[:, 0]], 1), torch.stack([sn / s, c / s, t[:, 1]], 1)], 1
    )
    grid = F.affine_grid(a, list(x.shape), align_corners=False)
    xo = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    yo = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False).clone()
    ox, oy = yo[:, 2].clone(), yo[:, 1].clone()
    c, sn, s = c[:, None, None], sn[:, None, None], s[:, None, None]
    yo[:, 2] = s * (c * ox + sn * oy)
    yo[:, 1] = s * (-sn * ox + c * oy)
    return xo, yo


def _flip(x, y, rng):
    """Random flips of a batch; the offset along a flipped axis changes sign."""
    if rng.random() < 0.5:
        x, y = x.flip(-2), y.flip(-2)
        y = y.clone()
        y[:, 1] = -y[:, 1]
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
        y = y.clone()
        y[:, 2] = -y[:, 2]
    return x, y


def load_model(state: dict, device: str | None = None):
    """Rebuild the network from a state; weights are read with weights_only=True (no code runs)."""
    from .net import N_OUTPUTS, build_net

    net = build_net(state.get("net", "unet3"), state["width"], state.get("n_outputs", N_OUTPUTS))
    return load_weights(net, state["weights"], device)
