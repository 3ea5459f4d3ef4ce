"""What every learned method does with its torch network the same way.

Training runs in ``prepare`` (on a GPU task when the cluster has one, see
``PrepareContext.train_where_gpu``), seeded, and returns the weights as bytes inside a plain
state; workers rebuild the network from that state once (:meth:`TorchMethod.load`). Weights are
read with ``torch.load(weights_only=True)``, so a state file cannot run code. torch is imported
only inside these functions: importing a method stays cheap for the driver and for methods
without a network.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from ..base import MODEL_ACTOR, CellMethod, Resources


def pick_device(device: str | None = None) -> str:
    """``device``, else the GPU when torch sees one, else the CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def train_on_device(train: Callable[..., dict], *args, device: str | None = None, **kwargs) -> dict:
    """``train(*args, device=..., **kwargs)`` on the chosen device.

    On the CPU with one torch thread: the batches are small, so intra-op threads mostly
    spin-wait, which on a shared machine made each step many times slower (measured ~25x).
    """
    import torch

    device = pick_device(device)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        return train(*args, device=device, **kwargs)
    finally:
        torch.set_num_threads(threads)


def plateaued(losses, patience: int, tol: float) -> bool:
    """The last ``patience`` epochs improved on the best before them by less than ``tol`` of it."""
    if patience <= 0 or len(losses) <= patience:
        return False
    return min(losses[-patience:]) > (1.0 - tol) * min(losses[:-patience])


def fit_epochs(
    opt,
    rng: np.random.Generator,
    n_items: int,
    epochs: int,
    batch_size: int,
    batch_loss: Callable[[np.ndarray], Any],
    patience: int = 0,
    tol: float = 0.0,
) -> np.ndarray:
    """Minibatch descent: each epoch visits the items in a fresh order drawn from ``rng``.

    ``batch_loss(indices)`` returns the loss to minimise, or a tuple whose first entry is it and
    the rest are parts to record. Returns (epochs run, parts) per-item means of every returned
    loss. With ``patience`` it stops before ``epochs`` once the loss plateaus (:func:`plateaued`).
    """
    history = []
    for _epoch in range(epochs):
        order = rng.permutation(n_items)
        total = 0.0
        for s in range(0, n_items, batch_size):
            idx = order[s : s + batch_size]
            losses = batch_loss(idx)
            losses = losses if isinstance(losses, tuple) else (losses,)
            opt.zero_grad()
            losses[0].backward()
            opt.step()
            total = total + np.array([float(v.detach()) for v in losses]) * len(idx)
        history.append(total / n_items)
        if plateaued([h[0] for h in history], patience, tol):
            break
    return np.array(history)


def weights_to_bytes(model) -> bytes:
    """The network's weights (moved to the CPU) as ``torch.save`` bytes: picklable, device-free."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def load_weights(model, weights: bytes, device: str | None = None):
    """``model`` with ``weights`` loaded (``weights_only=True``: no code runs), in eval mode on
    ``device``; returns (model, device).
    """
    import torch

    device = pick_device(device)
    model.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    return model.to(device).eval(), device


def _rounded(value):
    """Floats of a training history rounded for run.json (lists and dicts walked)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 5)
    return value


class TorchMethod(CellMethod):
    """A cell method whose network is trained on the chip in ``prepare`` and run in model actors.

    ``self.cfg`` is the method's section (``cells.<name>``). Its state holds the training result
    under ``"train"`` (weights as bytes, ``history``, ``device``); subclasses set
    :attr:`load_model` to their ``load_model(train_state, device=None) -> (model, device)``.
    """

    load_model: Callable = None
    model = None

    def __init__(self, config, facts=None):
        super().__init__(config, facts)
        self.cfg = getattr(config.cells, self.name)  # the method's own section, cells.<name>

    def compute(self) -> Resources:
        return MODEL_ACTOR

    def load(self, state) -> None:
        self.state = state
        self.model, self.device = self.load_model(state["train"])

    def describe_state(self, state) -> dict:
        train = state["train"]
        return {"device": train.get("device"), "loss": _rounded(train["history"])}
