"""Method state on disk: plain data only, bound to its run; a planted pickle is refused
unexecuted.
"""

import json
import os
import pickle

import numpy as np
import pytest

from stseg_dist import statefile
from stseg_dist.statefile import StateFileError
from tests.conftest import make_blob_chip, small_tiles_config
from tests.plugin_methods import StatefulExpansion, stateful_state

BIND = {"run_key": "0123456789abcdef", "ids": "abc", "method": "x"}


class _Evil:
    """Unpickling this runs code: it creates the file named by ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_round_trip_keeps_types_and_values():
    state = stateful_state()
    back = statefile.loads(statefile.dumps(state, BIND), BIND)
    StatefulExpansion.load(None, back)  # the plugin's own type-exact comparison
    assert (
        back["offset"] == (3, -2)
        and back["hvg"][7].dtype == bool
        and np.isnan(back["history"]["loss"][2])
    )


def test_unsupported_values_are_named():
    with pytest.raises(StateFileError, match=r"state\.model: a builtins\.object"):
        statefile.dumps({"model": object()}, BIND)
    with pytest.raises(StateFileError, match=r"state\.cells: arrays of dtype object"):
        statefile.dumps({"cells": np.array([{"a": 1}], dtype=object)}, BIND)


def test_pickles_foreign_and_altered_files_are_refused(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(StateFileError, match="not a plain-data state file"):
        statefile.loads(pickle.dumps({"train": _Evil(marker)}), BIND, where="planted.npz")
    # an npz whose member is a pickled object array is refused too (allow_pickle=False)
    import io

    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array([_Evil(marker)], dtype=object))
    with pytest.raises(StateFileError, match="not a plain-data state file|Object arrays"):
        statefile.loads(buf.getvalue(), BIND)
    assert not marker.exists()

    data = statefile.dumps({"w": np.arange(100, dtype=np.float32)}, BIND)
    with pytest.raises(StateFileError, match="belongs to .* not to this run"):
        statefile.loads(data, {**BIND, "run_key": "fedcba9876543210"})
    # one changed weight: the digest no longer matches
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    members["a0"] = members["a0"].copy()
    members["a0"][5] = 42.0
    buf = io.BytesIO()
    np.savez(buf, **members)
    with pytest.raises(StateFileError, match="does not match its digest"):
        statefile.loads(buf.getvalue(), BIND)


def test_planted_pickle_in_the_work_dir_is_refused_and_recomputed(tmp_path, monkeypatch):
    """A run left unfinished keeps its work dir; a pickle planted there (under the old and the new
    state file names) never runs, the state is recomputed, and the outputs equal a clean run's.
    """
    from stseg_dist.driver import run_pipeline
    from stseg_dist.errors import RunIncompleteError
    from tests.conftest import assert_same_outputs

    chip = make_blob_chip(tmp_path / "chip", shape=(160, 200), n_nuclei=20, n_transcripts=4_000)
    cfg = small_tiles_config("cells.method=tests.plugin_methods:StatefulExpansion")
    monkeypatch.setenv("STSEG_FAULT_DIR", str(tmp_path / "faults"))
    (tmp_path / "faults").mkdir()
    calls = tmp_path / "faults" / "prepare-calls"

    clean = tmp_path / "clean"
    run_pipeline(chip, str(clean), cfg, local=True)
    out = tmp_path / "out"
    monkeypatch.setenv("STSEG_POISON", "1")
    with pytest.raises(RunIncompleteError):
        run_pipeline(chip, str(out), cfg, local=True)
    assert calls.read_text() == "2"
    [work] = (out / "_work").iterdir()
    [saved] = work.glob("method_state-*.npz")

    # a resume reads the saved state back (no new prepare), through the plain-data format
    monkeypatch.setenv("STSEG_POISON", "1")
    with pytest.raises(RunIncompleteError):
        run_pipeline(chip, str(out), cfg, local=True)
    assert calls.read_text() == "2"

    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"train": _Evil(marker)})
    saved.write_bytes(evil)
    (work / saved.name.replace(".npz", ".pkl")).write_bytes(evil)
    monkeypatch.delenv("STSEG_POISON")
    summary = run_pipeline(chip, str(out), cfg, local=True)
    assert not marker.exists()
    assert calls.read_text() == "3"  # recomputed
    assert summary["status"] == "complete"
    [warning] = [w for w in summary["warnings"] if "refused a saved method state" in w]
    assert saved.name in warning and "not a plain-data state file" in warning
    assert warning in json.loads((out / "run.json").read_text())["warnings"]
    assert_same_outputs(clean, out)
