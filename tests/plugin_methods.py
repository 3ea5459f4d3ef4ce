"""Test cell methods, loaded by import path (``cells.method=tests.plugin_methods:X``): some fail on
purpose, some ask for GPUs.

Attempts are remembered in files under ``$STSEG_FAULT_DIR`` so that "fail on the first attempt"
holds across Ray worker processes and retries.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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


#: What StatefulExpansion.prepare returns: every kind of value a method state holds (the real
#: methods' states are dicts of arrays, torch weights as bytes, numbers, lists, tuples, None and
#: dicts with int keys).
def stateful_state():
    import numpy as np

    return {
        "weights": b"\x00\x01 not a pickle",
        "offset": (3, -2),
        "threshold": None,
        "hvg": {0: np.array([True, False]), 7: np.array([False, True])},
        "history": {"loss": [0.5, 0.25, float("nan")]},
        "scale": np.float64(1.5),
        "n": 3,
        "lut": np.arange(6, dtype=np.int64).reshape(2, 3),
        "names": ["a", "b"],
        "__dict__": "tag-like key",
    }


class StatefulExpansion(ExpansionMethod):
    """Expansion with a chip-wide prepare step whose state must come back from disk unchanged;
    counts its prepare calls in ``$STSEG_FAULT_DIR`` and fails tile 0 while ``STSEG_POISON=1``.
    """

    def prepare(self, ctx):
        marker = Path(os.environ["STSEG_FAULT_DIR"]) / "prepare-calls"
        marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))
        return stateful_state()

    def load(self, state):
        import numpy as np

        want = stateful_state()
        assert state.keys() == want.keys(), state.keys()
        for k, v in want.items():
            got = state[k]
            assert type(got) is type(v), (k, type(got), type(v))
            if k == "hvg":
                assert all(type(i) is int for i in got) and all((got[i] == v[i]).all() for i in v)
            elif k == "history":
                np.testing.assert_array_equal(got["loss"], v["loss"])
            elif isinstance(v, np.ndarray):
                np.testing.assert_array_equal(got, v)
                assert got.dtype == v.dtype
            else:
                assert got == v, (k, got, v)

    def segment(self, data):
        if data.tile.index == 0 and os.environ.get("STSEG_POISON") == "1":
            raise RuntimeError("poison tile 0")
        return super().segment(data)


class LeakyExpansion(ExpansionMethod):
    """Echoes its credentials (storage options, environment) in a log line on every tile and in
    the error of tile 0 while ``STSEG_POISON=1``, as a careless storage library might.
    """

    def segment(self, data):
        import logging

        c = self.config
        so = {**c.nuclei.cellpose.storage_options, **c.cells.membrane.cellpose.storage_options}
        logging.getLogger(__name__).warning(
            "tile %d reads with %s, env %s", data.tile.index, so, dict(os.environ)
        )
        if data.tile.index == 0 and os.environ.get("STSEG_POISON") == "1":
            raise RuntimeError(f"access denied for {so} (environment {dict(os.environ)})")
        return super().segment(data)


class SleepyExpansion(ExpansionMethod):
    """Sleeps ``$STSEG_SLEEP_S`` seconds per tile: a run that is still busy when another starts."""

    def segment(self, data):
        import time

        time.sleep(float(os.environ.get("STSEG_SLEEP_S", "0")))
        return super().segment(data)


class NuclearGeneExpansion(ExpansionMethod):
    """A transcript-level method (the ``TileResult`` contract): expansion's labels, but a
    transcript of an even-numbered gene joins a cell only where it lies on a nucleus, which no
    pixel lookup would do. Depends only on each transcript's own pixel and gene: tile-exact.
    """

    def segment(self, data):
        from stseg_dist.tiledata import TileResult

        pixel = super().segment(data).resolve(data)
        tx = data.transcripts
        keep = pixel.in_nucleus | (tx.gene % 2 == 1)
        return TileResult(pixel.labels, cell_id=np.where(keep, pixel.cell_id, 0))


class LabelsOnlyExpansion(ExpansionMethod):
    """Written against the former contract: ``segment`` returns a bare label image."""

    def segment(self, data):
        return np.asarray(super().segment(data).labels)
