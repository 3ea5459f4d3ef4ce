"""Self-supervised SSL-CST training on spots sampled across the chip, and inference over spots.

The loss is cross-entropy on in/out of cell over the labelled spots (classes weighted by their
inverse frequency, since negatives are rare in dense tissue) plus cross-entropy on the direction
over the positives. With ``augment`` each batch is turned by one of the 8 symmetries of the square
(the token grid and the direction label together), so the direction head learns an equivariant
rule from nucleus interiors that carries over to the cytoplasm, where no label exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common.torch_model import fit_epochs, load_weights, train_on_device, weights_to_bytes
from .features import IGNORE, direction_class, gather_tokens, neighbourhood_offsets, unit_steps


@dataclass
class TrainingSpots:
    """Labelled spots with their raw tokens, keyed by global spot so order never depends on
    tiles.
    """

    key: np.ndarray  # (N,) int64 global spot row * 2**32 + col
    counts: np.ndarray  # (N, T, G+1) uint16 token counts
    prior: np.ndarray  # (N, T) float32 token priors
    inout: np.ndarray  # (N,) int64 1 in, 0 out
    direction: np.ndarray  # (N,) int64 class or IGNORE

    def __len__(self) -> int:
        return len(self.key)

    @classmethod
    def concat(cls, parts: list[TrainingSpots]) -> TrainingSpots:
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            raise ValueError("no labelled spots to train on")
        out = cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("key", "counts", "prior", "inout", "direction")
            )
        )
        order = np.argsort(out.key, kind="stable")
        return cls(
            out.key[order],
            out.counts[order],
            out.prior[order],
            out.inout[order],
            out.direction[order],
        )


def symmetries(
    k: int, n_directions: int, floor: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8 symmetries of the square as (token permutation, direction class map).

    ``tokens[:, perm]`` is the turned neighbourhood; ``dmap[c]`` the class a direction c becomes.
    The map is derived from where two unit-offset tokens land, so it cannot drift from the
    permutation. Needs k >= 3 and n_directions a multiple of 4.
    """
    idx = np.arange(k * k).reshape(k, k)
    dr, dc = neighbourhood_offsets(k)
    steps = unit_steps(n_directions, centre=floor)  # a floor bin is turned by its middle
    out = []
    for flip in (False, True):
        for rot in range(4):
            g = np.rot90(idx, rot)
            g = np.fliplr(g) if flip else g
            perm = g.ravel()
            where = np.argsort(perm)  # where[t] = new position of original token t
            ty = where[np.flatnonzero((dr == 1) & (dc == 0))[0]]
            tx = where[np.flatnonzero((dr == 0) & (dc == 1))[0]]
            m = np.array(
                [[dr[ty], dr[tx]], [dc[ty], dc[tx]]], np.float64
            )  # (dy, dx) -> new (dy, dx)
            new = steps @ m.T
            out.append((perm, direction_class(new[:, 0], new[:, 1], n_directions, floor)))
    return out


def train_sslcst(
    spots: TrainingSpots, k: int, n_counts: int, cfg, *, device: str | None = None, log=None
) -> dict:
    """Train the encoder; return a picklable state with the weights as bytes (on the CPU on one
    thread: batches of 64 x 25 tokens gain nothing from intra-op threads).
    """
    return train_on_device(_train, spots, k, n_counts, cfg, device=device, log=log)


def _train(spots: TrainingSpots, k: int, n_counts: int, cfg, *, device: str, log) -> dict:
    import torch
    from torch import nn

    from .model import SpotEncoder

    if not len(spots):
        raise ValueError("SSL-CST training needs labelled spots")
    spots = TrainingSpots.concat(
        [spots]
    )  # in global spot order: the tiling never shows in the weights
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    paper = getattr(cfg, "variant", "stseg") == "paper"
    arch = {
        "n_counts": n_counts,
        "k": k,
        "d_model": cfg.d_model,
        "heads": cfg.heads,
        "n_directions": cfg.n_directions,
        "blocks": cfg.blocks if paper else 1,
        "pre_ln": paper,
    }
    model = SpotEncoder(**arch).to(device)
    n_in = np.bincount(spots.inout, minlength=2).astype(np.float64)
    weight = torch.tensor(
        np.where(n_in > 0, len(spots) / (2 * np.maximum(n_in, 1)), 0.0),
        dtype=torch.float32,
        device=device,
    )
    ce_inout = nn.CrossEntropyLoss(weight=weight)
    ce_dir = nn.CrossEntropyLoss(ignore_index=IGNORE)
    t = lambda a, dt=None: torch.as_tensor(a, device=device, dtype=dt)  # noqa: E731
    counts = t(spots.counts.astype(np.float32))
    prior = t(spots.prior)
    inout, direction = t(spots.inout), t(spots.direction)
    sym = (
        [(t(p), t(d)) for p, d in symmetries(k, cfg.n_directions, paper)]
        if cfg.augment
        else [(None, None)]
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def batch_loss(order: np.ndarray):
        idx = t(order)
        c, p, y, d = counts[idx], prior[idx], inout[idx], direction[idx]
        perm, dmap = sym[int(rng.integers(len(sym)))]
        if perm is not None:
            c, p = c[:, perm], p[:, perm]
            d = torch.where(d >= 0, dmap[d.clamp(min=0)], d)
        lo, ld = model(c, p)
        l_in = ce_inout(lo, y)
        l_dir = ce_dir(ld, d) if bool((d >= 0).any()) else ld.sum() * 0
        return l_in + l_dir, l_in, l_dir

    model.train()
    means = fit_epochs(opt, rng, len(spots), cfg.epochs, cfg.batch_size, batch_loss)
    history = {
        name: [float(v) for v in means[:, i]]
        for i, name in enumerate(("loss", "inout", "direction"))
    }
    if log:
        log(
            f"SSL-CST training on {len(spots)} spots ({int(n_in[1])} in, {int(n_in[0])} out): "
            f"loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}"
        )
    return {
        "weights": weights_to_bytes(model),
        "arch": arch,
        "history": history,
        "n_spots": len(spots),
        "n_in": int(n_in[1]),
        "n_out": int(n_in[0]),
        "device": str(device),
    }


def load_model(state: dict, device: str | None = None):
    """Rebuild the encoder; weights are read with weights_only=True (no code runs)."""
    from .model import SpotEncoder

    return load_weights(SpotEncoder(**state["arch"]), state["weights"], device)


def predict_spots(
    model,
    device,
    grid,
    rows: np.ndarray,
    cols: np.ndarray,
    k: int,
    chunk: int = 8192,
    probs: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """In-cell probability and direction class (``probs``: the (N, n) direction probabilities) of
    window spots (rows, cols), in fixed-size chunks.
    """
    import torch

    p_in = np.zeros(len(rows), np.float32)
    dirs = []
    with torch.no_grad():
        for s in range(0, len(rows), chunk):
            c, p = gather_tokens(grid, rows[s : s + chunk], cols[s : s + chunk], k)
            lo, ld = model(torch.as_tensor(c, device=device), torch.as_tensor(p, device=device))
            p_in[s : s + chunk] = torch.softmax(lo, 1)[:, 1].cpu().numpy()
            dirs.append(torch.softmax(ld, 1).cpu().numpy() if probs else ld.argmax(1).cpu().numpy())
    if not dirs:
        return p_in, np.zeros(
            (0, model.direction.out_features) if probs else 0, np.float32 if probs else np.int64
        )
    return p_in, np.concatenate(dirs)
