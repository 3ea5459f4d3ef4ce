"""GeneSegNet training on the chip itself, with recursive label refinement.

There is no ground truth: round 1 trains on nuclei expanded by a fixed distance; each later
round trains on the previous round's post-processed predictions over the same patches (which
follow the RNA and the stain rather than a fixed radius), until two consecutive rounds' labels
agree (mean per-cell IoU above ``agree_iou``) or ``max_rounds`` is reached. The network keeps
its weights across rounds, so each round refines rather than restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..common.torch_model import fit_epochs, load_weights, train_on_device, weights_to_bytes
from .features import normalise_inputs
from .inference import assign_cells, mean_cell_iou


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


#: Label of bins left out of the loss: neither a cell nor background is known there.
IGNORE = -1


#: RNA-rich bins: the RNA map above this fraction of the chip mean (in tissue the cytoplasm is
#: mostly above the mean, gaps between cells far below it).
RICH_RNA = 0.5


def initial_labels(p: Patch, rna_mean: float) -> np.ndarray:
    """Round-1 labels: nuclei expanded by the initial distance, plus the RNA-rich bins up to half
    a cell diameter away (each to its nearest nucleus); RNA-poor bins there are background."""
    rich = p.rna >= RICH_RNA * rna_mean
    return np.where(p.init_labels > 0, p.init_labels, np.where(rich, p.far_labels, 0))


def targets(labels: np.ndarray, p: Patch, offset_scale: float) -> np.ndarray:
    """(5, P, P): cell mask, row and column offset to the nucleus centre (scaled), offset weight,
    cell-mask weight (0 on :data:`IGNORE` bins)."""
    out = np.zeros((5, *labels.shape), np.float32)
    out[4] = labels != IGNORE
    cell = labels > 0
    if not cell.any():
        return out
    out[0][cell] = 1.0
    rr, cc = np.nonzero(cell)
    lab = labels[rr, cc]
    pos = np.minimum(np.searchsorted(p.ids, lab), max(len(p.ids) - 1, 0))
    known = (p.ids[pos] == lab) if len(p.ids) else np.zeros(len(lab), bool)
    rr, cc, pos = rr[known], cc[known], pos[known]  # a cell whose centre is unknown teaches no offset
    out[1, rr, cc] = (p.centroids[pos, 0] - (rr + 0.5)) / offset_scale
    out[2, rr, cc] = (p.centroids[pos, 1] - (cc + 0.5)) / offset_scale
    out[3, rr, cc] = 1.0
    return out


def refine(labels: list[np.ndarray], fit: Callable[[list[np.ndarray]], list[float]],
           relabel: Callable[[], list[np.ndarray]], max_rounds: int, agree_iou: float,
           log: Callable[[str], None] | None = None) -> list[dict]:
    """The recursive loop: fit on labels, relabel from the fit, stop once two rounds agree.

    ``fit`` returns its per-epoch losses; the history keeps them with each round's IoU.
    """
    history = []
    for k in range(1, max_rounds + 1):
        losses = [float(v) for v in fit(labels)]
        new = relabel()
        iou = mean_cell_iou(labels, new)
        history.append({"round": k, "loss": losses[-1] if losses else float("nan"), "epoch_losses": losses,
                        "iou_with_previous": iou})
        if log:
            log(f"GeneSegNet round {k}: loss {history[-1]['loss']:.4f}, mean cell IoU with its labels {iou:.3f}")
        if iou > agree_iou:
            break
        labels = new
    return history


def train_genesegnet(patches: list[Patch], norm: dict, cfg, geometry: Geometry, *, device: str | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Train the U-Net with label refinement; return a picklable state with the weights as bytes."""
    if not patches:
        raise ValueError("GeneSegNet training needs at least one patch with a nucleus")
    return train_on_device(_train, patches, norm, cfg, geometry, device=device, log=log)


def _train(patches, norm, cfg, geometry, *, device: str, log) -> dict:
    import torch

    from .net import UNet

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    patches = sorted(patches, key=lambda p: p.key)
    x = torch.as_tensor(np.stack([normalise_inputs(p.stain, p.rna, norm) for p in patches]), device=device)
    model = UNet(cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")

    def fit(labels: list[np.ndarray]) -> list[float]:
        y = torch.as_tensor(np.stack([targets(lab, p, geometry.offset_scale) for lab, p in zip(labels, patches)]),
                            device=device)

        def batch_loss(order: np.ndarray):
            idx = torch.as_tensor(order, device=device)
            xb, yb = _flip(x[idx], y[idx], rng)
            out = model(xb)
            mask, known = yb[:, 3:4], yb[:, 4:5]
            off = ((out[:, 1:3] - yb[:, 1:3]) ** 2 * mask).sum() / (2 * mask.sum()).clamp(min=1.0)
            cell = (bce(out[:, :1], yb[:, :1]) * known).sum() / known.sum().clamp(min=1.0)
            return cell + off

        model.train()
        return list(fit_epochs(opt, rng, len(patches), cfg.epochs, cfg.batch_size, batch_loss)[:, 0])

    def relabel() -> list[np.ndarray]:
        return predict_patch_labels(model, device, x, patches, geometry, cfg.prob_threshold, cfg.batch_size)

    first = [initial_labels(p, norm["rna_mean"]) for p in patches]
    history = refine(first, fit, relabel, cfg.max_rounds, cfg.agree_iou, log)
    return {"weights": weights_to_bytes(model), "width": cfg.width, "history": history, "n_patches": len(patches),
            "device": str(device)}


def predict_patch_labels(model, device, x, patches: list[Patch], geometry: Geometry, threshold: float,
                         batch_size: int) -> list[np.ndarray]:
    """Post-processed predictions on the training patches: the next round's labels."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(patches), batch_size):
            y = model(x[s : s + batch_size])
            prob = torch.sigmoid(y[:, 0]).cpu().numpy()
            offs = (y[:, 1:] * geometry.offset_scale).cpu().numpy()
            for k, p in enumerate(patches[s : s + batch_size]):
                lab = assign_cells(prob[k], offs[k], p.ids, p.centroids, threshold, geometry.reach,
                                   geometry.tolerance)
                # confident bins that land on no nucleus are left out of the next round's loss
                lab = np.where((lab == 0) & (prob[k] >= threshold), IGNORE, lab)
                out.append(np.where(p.nuclei > 0, p.nuclei, lab))
    return out


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
    from .net import UNet

    return load_weights(UNet(state["width"]), state["weights"], device)
