"""Test cell methods, loaded by import path (``cells.method=tests.plugin_methods:X``): some fail on
purpose, some ask for GPUs.

Attempts are remembered in files under ``$STSEG_FAULT_DIR`` so that "fail on the first attempt"
holds across Ray worker processes and retries.
"""

from __future__ import annotations

import os
from pathlib import Path

from stseg_dist.methods.expansion import ExpansionMethod


def _first_attempt(kind: str, index: int) -> bool:
    marker = Path(os.environ["STSEG_FAULT_DIR"]) / f"{kind}-{index}"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return True


def _targets() -> set[int]:
    return {int(v) for v in os.environ.get("STSEG_FAULT_TILES", "").split(",") if v}


class FlakyExpansion(ExpansionMethod):
    """Raises on the first attempt of each target tile, then behaves."""

    def segment(self, data):
        if data.tile.index in _targets() and _first_attempt("flaky", data.tile.index):
            raise RuntimeError(f"injected fault on tile {data.tile.index}")
        return super().segment(data)


class PoisonExpansion(ExpansionMethod):
    """Always raises on the target tiles: a poison tile."""

    def segment(self, data):
        if data.tile.index in _targets():
            raise RuntimeError(f"poison tile {data.tile.index}")
        return super().segment(data)


class SlowActorExpansion(ExpansionMethod):
    """Runs in actors (like a model-based method) and is slow enough to be killed mid-run."""

    uses_model = True

    def actor_resources(self):
        return (2, 0.0)

    def segment(self, data):
        import time

        time.sleep(0.05)
        return super().segment(data)


class GpuActorExpansion(ExpansionMethod):
    """Asks for one GPU per actor, like UCS inference: must land on the GPU node."""

    uses_model = True

    def actor_resources(self):
        return (1, 1.0)
