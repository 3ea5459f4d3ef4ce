"""Self-supervised UCS training on patches sampled from the chip itself.

Foreground labels: nucleus bins positive; bins outside the nuclei dilated (10x10 kernel, 4
iterations) whose count is below that outside region's mean negative and, an addition to the
paper (``background_density``), the sparse gaps between cells negative and dense bins next to
nuclei positive; the rest ignored.
Cell labels (per cell of a patch): its nucleus positive; foreground-net background (p < 0.5)
negative; the rest ignored.

``variant: paper`` trains the reference-size nets with the published labels and optimiser
(Adam, lr 1e-4, betas 0.9/0.999, weight decay 1e-4) and flip/rot90 augmentation of the
foreground patches; the number of steps is ours (``epochs`` over the sampled patches), since
a crop has far fewer patches than the slides the published single epoch ran over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..common.torch_model import fit_epochs, load_weights, train_on_device, weights_to_bytes
from .features import cell_marker_mask
from .inference import empty_field_foreground
from .softmask import softmask

IGNORE = -100
PAPER_LR = 1e-4


@dataclass
class Patch:
    """One training patch on the bin grid, keyed by the nucleus it is centred on."""

    key: int  # global nucleus ID: sorting by it makes training independent of the tiling
    rows: np.ndarray
    cols: np.ndarray
    genes: np.ndarray
    nuclei: np.ndarray  # (S, S) int64
    markers: np.ndarray | None = None  # (S, S) int64 marker cell type per bin + 1 (0 = none)


def foreground_labels(
    nuclei: np.ndarray,
    counts: np.ndarray,
    iterations: int = 4,
    density: float | None = None,
    sigma: float = 1.5,
    margin: int = 2,
    ring: int = 3,
    kernel: np.ndarray | None = None,
    background: tuple[float, float] | None = None,
) -> np.ndarray:
    """Nucleus bins 1; background 0; the rest ignored.

    Background is the paper's (outside the nuclei dilated by a 10x10 kernel ``iterations`` times,
    with counts below that region's mean). With ``density``, two additions: the sparse bins
    between cells are background (more than ``margin`` bins off every nucleus, Gaussian-smoothed
    count below ``density`` times the nuclei's mean), and the dense bins within ``ring`` bins of a
    nucleus are cell (smoothed count at least twice that), so the net also learns what cytoplasm
    looks like: its genes differ from the nucleus's, and nuclei alone leave it uncalibrated there.

    With ``background`` (two smoothed counts per bin from the chip's own background, see
    method.chip_background) the same two additions are calibrated against the chip itself rather
    than against its nuclei: off the nuclei, a smoothed count at most the first (the background's
    mean) is background; within ``ring`` bins of a nucleus, one above the second (p < 0.01 above
    it) is cell. Sparse tissue stays cell wherever it beats the chip's own background.
    """
    pos = nuclei > 0
    kernel = np.ones((10, 10), bool) if kernel is None else kernel
    dil = ndi.binary_dilation(pos, structure=kernel, iterations=iterations)
    outside = ~dil
    labels = np.full(nuclei.shape, IGNORE, np.int64)
    if outside.any():
        labels[outside & (counts <= counts[outside].mean())] = (
            0  # the public code: at most the mean
        )
    if density is not None and pos.any():
        smooth = ndi.gaussian_filter(counts.astype(np.float32), sigma, mode="constant")
        level = smooth[pos].mean()
        off = ~ndi.binary_dilation(pos, iterations=margin)
        labels[off & (smooth < density * level)] = 0
        near = ndi.binary_dilation(pos, iterations=ring)
        labels[near & (smooth >= 2 * density * level)] = 1
    if background is not None:
        low, high = background
        smooth = ndi.gaussian_filter(counts.astype(np.float32), sigma, mode="reflect")
        labels[~ndi.binary_dilation(pos, iterations=margin) & (smooth <= low)] = 0
        labels[ndi.binary_dilation(pos, iterations=ring) & (smooth > high)] = 1
    labels[pos] = 1
    return labels


def cell_labels(nuclei: np.ndarray, cell: int, fg_prob: np.ndarray) -> np.ndarray:
    labels = np.full(nuclei.shape, IGNORE, np.int64)
    labels[fg_prob < 0.5] = 0
    labels[nuclei == cell] = 1
    return labels


def paper_kernel() -> np.ndarray:
    """The public code's 10x10 elliptical dilation kernel (OpenCV's MORPH_ELLIPSE shape)."""
    r = (np.arange(10) - 4.5) / 5.0
    return (r[:, None] ** 2 + r[None, :] ** 2) <= 1.0


def augment(p: Patch, k: int, flip: bool) -> Patch:
    """The patch rotated by k quarter turns, flipped first if ``flip``
    (sparse indices and rasters alike).
    """
    n = p.nuclei.shape[0]
    rows, cols = (n - 1 - p.rows if flip else p.rows), p.cols
    nuc, mk = (
        (p.nuclei[::-1] if flip else p.nuclei),
        (None if p.markers is None else (p.markers[::-1] if flip else p.markers)),
    )
    for _ in range(k % 4):  # np.rot90: (r, c) -> (n - 1 - c, r)
        rows, cols = n - 1 - cols, rows
        nuc = np.rot90(nuc)
        mk = None if mk is None else np.rot90(mk)
    return Patch(
        p.key,
        rows,
        cols,
        p.genes,
        np.ascontiguousarray(nuc),
        None if mk is None else np.ascontiguousarray(mk),
    )


def patch_counts(p: Patch) -> np.ndarray:
    out = np.zeros(p.nuclei.shape, np.float32)
    np.add.at(out, (p.rows, p.cols), 1.0)
    return out


def _batch(patches, device):
    import torch

    b = (
        np.concatenate([np.full(len(p.rows), i) for i, p in enumerate(patches)])
        if patches
        else np.zeros(0)
    )
    cat = lambda name: np.concatenate([getattr(p, name) for p in patches])  # noqa: E731
    t = lambda a: torch.as_tensor(np.asarray(a, np.int64), device=device)  # noqa: E731
    return t(b), t(cat("rows")), t(cat("cols")), t(cat("genes"))


def train_ucs(patches: list[Patch], n_genes: int, cfg, *, device: str | None = None, **kw) -> dict:
    """Train both networks; return a picklable state with the weights as bytes."""
    if not patches:
        raise ValueError("UCS training needs at least one patch with a nucleus")
    return train_on_device(_train, patches, n_genes, cfg, device=device, **kw)


def _train(
    patches: list[Patch],
    n_genes: int,
    cfg,
    *,
    device: str,
    pos_weight: float = 1.0,
    markers: bool = False,
    bin_um: float = 1.0,
    background: tuple[float, float] | None = None,
    log=None,
) -> dict:
    import torch
    from torch import nn

    from .nets import UCSModel

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    patches = sorted(patches, key=lambda p: p.key)
    paper = cfg.variant == "paper"
    markers = markers and not paper
    model = UCSModel(
        n_genes,
        markers=markers,
        expression=cfg.expression_profile and not paper,
        variant=cfg.variant,
    ).to(device)
    weights = torch.tensor([1.0, pos_weight], device=device)
    ce = nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
    label_args = {"iterations": cfg.background_dilation, "sigma": cfg.background_sigma_um / bin_um}
    if paper:
        label_args["kernel"] = paper_kernel()
    elif cfg.foreground_labels == "chip" and background is not None:
        label_args["background"] = background
    elif cfg.foreground_labels != "paper":  # "nuclei", or "chip" with no background to measure
        label_args["density"] = cfg.background_density
    history = {
        "foreground": _train_foreground(model, patches, cfg, ce, rng, device, label_args),
        "cell": _train_cells(model, patches, cfg, ce, rng, device, markers),
    }
    if log:
        log(
            f"UCS training: foreground loss {history['foreground'][0]:.3f} -> "
            f"{history['foreground'][-1]:.3f} "
            f"in {len(history['foreground'])} epochs, cell loss {history['cell'][0]:.3f} -> "
            f"{history['cell'][-1]:.3f} in {len(history['cell'])} epochs"
        )
    model.eval()
    return {
        "weights": weights_to_bytes(model),
        "n_genes": n_genes,
        "markers": markers,
        "variant": cfg.variant,
        "empty_field_foreground": empty_field_foreground(model, device),
        "expression": cfg.expression_profile and not paper,
        "history": history,
        "device": str(device),
        "n_patches": len(patches),
    }


def _adam(params, cfg):
    """The optimiser of both phases: Adam, at the published 1e-4 for the paper variant."""
    import torch

    lr = PAPER_LR if cfg.variant == "paper" else cfg.lr
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def _train_foreground(
    model, patches: list[Patch], cfg, ce, rng, device, label_args: dict
) -> list[float]:
    """Phase 1: the foreground net. The paper variant turns each patch by a random flip/rot90 per
    step and derives its labels after; ours labels each patch once.
    """
    import torch

    paper = cfg.variant == "paper"
    size = patches[0].nuclei.shape
    fixed = (
        None
        if paper
        else [foreground_labels(p.nuclei, patch_counts(p), **label_args) for p in patches]
    )
    opt = _adam(model.foreground.parameters(), cfg)

    def batch_loss(idx: np.ndarray):
        batch = [patches[i] for i in idx]
        if paper:
            batch = [augment(p, int(rng.integers(4)), bool(rng.integers(2))) for p in batch]
            labels = [foreground_labels(p.nuclei, patch_counts(p), **label_args) for p in batch]
        else:
            labels = [fixed[i] for i in idx]
        targets = torch.as_tensor(np.stack(labels), device=device)
        logits, _ = model.foreground(*_batch(batch, device), (len(batch), *size))
        return ce(logits, targets)

    model.train()
    return [
        float(v)
        for v in fit_epochs(
            opt,
            rng,
            len(patches),
            cfg.epochs,
            cfg.batch_size,
            batch_loss,
            patience=cfg.plateau_patience,
            tol=cfg.plateau_tol,
        )[:, 0]
    ]


def _train_cells(model, patches: list[Patch], cfg, ce, rng, device, markers: bool) -> list[float]:
    """Phase 2: the cell net on frozen foreground features. Every cell of every patch in a batch at
    once: cells on the batch axis, each looking at its own patch's reduced features.
    """
    import torch

    opt = _adam(model.cell.parameters(), cfg)
    model.foreground.eval()
    size = patches[0].nuclei.shape
    tau = softmask_tau(cfg)
    with torch.no_grad():
        feats, probs = [], []
        for s in range(0, len(patches), cfg.batch_size):
            batch = patches[s : s + cfg.batch_size]
            logits, f = model.foreground(*_batch(batch, device), (len(batch), *size))
            feats.append(f)
            probs.append(torch.softmax(logits, 1)[:, 1])
        feats_all = torch.cat(feats)
        prob_all = torch.cat(probs).cpu().numpy()
    masks, targets, mark = [], [], []
    for i, p in enumerate(patches):
        ids = np.unique(p.nuclei)
        ids = ids[ids > 0]
        masks.append(
            torch.as_tensor(
                np.stack([softmask(p.nuclei == c, tau, cfg.scaled_softmask) for c in ids])[:, None],
                device=device,
            )
        )
        targets.append(
            torch.as_tensor(
                np.stack([cell_labels(p.nuclei, c, prob_all[i]) for c in ids]), device=device
            )
        )
        mark.append(_marker_masks(p, ids, device) if markers else None)

    def batch_loss(idx: np.ndarray):
        local = torch.as_tensor(
            np.repeat(np.arange(len(idx)), [len(masks[i]) for i in idx]), device=device
        )
        sm = torch.cat([masks[i] for i in idx])
        mk = torch.cat([mark[i] for i in idx]) if markers else None
        logits = model.cell.classify(model.cell.reduce(feats_all[idx])[local], sm, mk)
        loss = ce(logits, torch.cat([targets[i] for i in idx]))
        return loss + 0.5 * _marker_loss(logits, mk, sm) if markers else loss

    model.cell.train()
    return [
        float(v)
        for v in fit_epochs(
            opt,
            rng,
            len(patches),
            cfg.epochs,
            cfg.batch_size,
            batch_loss,
            patience=cfg.plateau_patience,
            tol=cfg.plateau_tol,
        )[:, 0]
    ]


PAPER_TAU = 5.0  # the public code's default soft-mask temperature, in bins


def softmask_tau(cfg) -> float:
    return PAPER_TAU if cfg.variant == "paper" else cfg.tau


def load_model(state: dict, device: str | None = None):
    """Rebuild the model from a state; weights are read with weights_only=True (no code runs)."""
    from .nets import UCSModel

    model = UCSModel(
        state["n_genes"],
        markers=state.get("markers", False),
        expression=state.get("expression", False),
        variant=state.get("variant", "stseg"),
    )
    return load_weights(model, state["weights"], device)


def _marker_masks(p: Patch, ids, device):
    """Per cell: bins holding markers of the cell type its nucleus is enriched for."""
    import torch

    if p.markers is None:
        return torch.zeros((len(ids), 1, *p.nuclei.shape), device=device)
    out = np.stack([cell_marker_mask(p.markers, p.nuclei == c) for c in ids])[:, None]
    return torch.as_tensor(out, device=device)


def _marker_loss(logits, marker_mask, soft):
    """Extra cross-entropy: marker bins near the cell (soft mask > 0.3) belong to it."""
    import torch

    target = ((marker_mask[:, 0] > 0) & (soft[:, 0] > 0.3)).long()
    sel = target > 0
    if not sel.any():
        return logits.sum() * 0
    return torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[sel], target[sel])
