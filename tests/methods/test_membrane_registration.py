"""Membrane stain registered to the expression map by track lines (STCellbin): known flips,
rotations, scales and offsets recovered on generated chips, the same transform whatever the
tiling, the same cells as an untransformed chip through the pipeline, exact tile invariance, and
a clear refusal when a chip has no track lines.
"""

import json

import numpy as np
import pytest

from stseg_dist.driver import run_pipeline
from stseg_dist.errors import InputError
from stseg_dist.methods.membrane.registration import read_through
from stseg_dist.synth import synth_chip
from tests.conftest import one_tile_vs_many
from tests.methods.test_membrane import QUIET, cell_f1, config, prepare_state

TRACK = "cells.membrane.registration=track_lines"
#: Largest distance (full-scale px, 0.5 µm) between where the fit and the truth put a chip corner
#: or the centre; measured up to 0.63 px on these chips.
MAX_ERROR_PX = 1.0


def transformed_chip(path, size_um: float, seed: int, transform: dict | None) -> str:
    out = str(path / "chip")
    synth_chip(
        out,
        size_um,
        size_um,
        seed=seed,
        membrane=True,
        track_lines=True,
        stain_transform=transform if transform is not None else {},
    )
    return out


def truth_matrix(chip: str) -> np.ndarray:
    meta = json.load(open(f"{chip}/chip.json"))
    extra = meta.get("extra", meta)
    return np.asarray(extra["synthetic"]["stain_transform"]["matrix"])


def corner_error(est: np.ndarray, truth: np.ndarray, shape) -> float:
    h, w = shape
    pts = np.array(
        [[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1], [(w - 1) / 2, (h - 1) / 2, 1]]
    ).T
    return float(np.hypot(*((est @ pts) - (truth @ pts))[:2]).max())


# -- recovery -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seed, transform",
    [
        (0, {}),
        (1, {"rotation_deg": 90}),
        (2, {"flip": True}),
        (3, {"rotation_deg": 180, "scale": 0.95}),
        (4, {"rotation_deg": -88, "flip": True, "scale": 1.08, "shift_um": [5, -3]}),
        (5, {"rotation_deg": 2.5, "scale": 1.1, "shift_um": [-6, 4]}),
        (6, {"rotation_deg": 271, "scale": 0.9}),
    ],
)
def test_track_lines_recover_a_known_transform(tmp_path, seed, transform):
    chip = transformed_chip(tmp_path, 300, seed, transform)
    state = prepare_state(chip, TRACK)
    est, truth = np.asarray(state["transform"]), truth_matrix(chip)
    err = corner_error(est, truth, (600, 600))
    print(transform, state["registration"], f"max corner error {err:.2f} px")
    assert err <= MAX_ERROR_PX, (state["registration"], est, truth)
    assert state["registration"]["lines_matched"] - state["registration"]["runner_up_lines"] >= 2
    # the determinant's sign is the flip, its root the scale
    det = np.linalg.det(truth[:2, :2])
    assert np.sign(np.linalg.det(est[:2, :2])) == np.sign(det)
    assert abs(state["registration"]["scale"] - np.sqrt(abs(det))) <= 0.005


def test_transform_does_not_depend_on_the_tiling(tmp_path):
    """The maps are binned on the chip (each transcript and stain bin counted by one tile)."""
    chip = transformed_chip(tmp_path, 300, 4, {"rotation_deg": -88, "flip": True, "scale": 1.08})
    a, b = prepare_state(chip, TRACK), prepare_state(chip, TRACK, tile_size_um=48)
    assert a["transform"] == b["transform"] and a["registration"] == b["registration"]


def test_chip_without_track_lines_is_refused(tmp_path):
    chip = str(tmp_path / "chip")
    synth_chip(chip, 300, 300, seed=1, membrane=True)  # no track lines
    with pytest.raises(
        InputError, match=r"chip \(membrane channel 1\).*register_min_margin"
    ) as err:
        prepare_state(chip, TRACK)
    assert "track lines" in str(err.value)


def test_cli_synth_writes_a_transformed_stain_that_registers(tmp_path, capsys):
    """``stseg synth --track-lines --stain-transform JSON`` makes the chips above from the shell."""
    from stseg_dist import cli

    chip = str(tmp_path / "chip")
    assert (
        cli.main(
            [
                "synth",
                "--out",
                chip,
                "--width-um",
                "300",
                "--height-um",
                "300",
                "--seed",
                "5",
                "--membrane",
                "--track-lines",
                "--stain-transform",
                '{"rotation_deg": 90, "flip": true, "scale": 1.05}',
            ]
        )
        == 0
    )
    state = prepare_state(chip, TRACK)
    assert (
        corner_error(np.asarray(state["transform"]), truth_matrix(chip), (600, 600)) <= MAX_ERROR_PX
    )
    for bad, says in (
        ("{rotation", "--stain-transform is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"turn": 90}', "unknown keys"),
    ):
        assert (
            cli.main(
                [
                    "synth",
                    "--out",
                    str(tmp_path / "bad"),
                    "--width-um",
                    "100",
                    "--height-um",
                    "100",
                    "--membrane",
                    "--stain-transform",
                    bad,
                ]
            )
            == 2
        )
        assert says in capsys.readouterr().err
    assert not (tmp_path / "bad" / "chip.json").exists()


# -- reading through the transform ----------------------------------------------------------------
def test_read_through_is_exact_per_tile_and_identity_is_the_image():
    rng = np.random.default_rng(0)
    img = rng.random((90, 120)).astype(np.float32)
    read = lambda r, c: img[r, c]  # noqa: E731
    np.testing.assert_array_equal(read_through(read, img.shape, np.eye(3), (0, 90, 0, 120)), img)
    t = np.radians(93.0)
    m = np.array(
        [
            [-1.04 * np.cos(t), -1.04 * np.sin(t), 100.0],
            [-1.04 * np.sin(t), 1.04 * np.cos(t), 20.0],
            [0, 0, 1],
        ]
    )
    whole = read_through(read, img.shape, m, (0, 90, 0, 120))
    parts = np.full_like(whole, -1)
    for r0 in range(0, 90, 17):
        for c0 in range(0, 120, 23):
            win = (r0, min(90, r0 + 17), c0, min(120, c0 + 23))
            parts[win[0] : win[1], win[2] : win[3]] = read_through(read, img.shape, m, win)
    np.testing.assert_array_equal(parts, whole)  # NaN off the stain, equal everywhere else
    assert np.isnan(whole).any() and np.isfinite(whole).mean() > 0.1


# -- through the pipeline -----------------------------------------------------------------------
def test_transformed_chip_segments_like_the_untransformed_one(tmp_path):
    """A flipped, quarter-turned, scaled and shifted stain gives the cells of the same chip with
    its stain in the transcripts' frame; without registration it does not.
    """
    plain = transformed_chip(tmp_path / "plain", 300, 7, None)
    moved = transformed_chip(
        tmp_path / "moved",
        300,
        7,
        {"rotation_deg": 91.0, "flip": True, "scale": 1.05, "shift_um": [4, -6]},
    )
    f1 = {}
    for name, chip, items in (
        ("plain", plain, [TRACK]),
        ("moved", moved, [TRACK]),
        ("unregistered", moved, ["cells.membrane.register=false"]),
    ):
        run_pipeline(
            chip, str(tmp_path / name / "out"), config("cells.method=membrane", *items), local=True
        )
        f1[name] = cell_f1(chip, tmp_path / name / "out")
    print("cell F1 at IoU 0.5:", {k: round(v, 3) for k, v in f1.items()})
    # measured 0.854 vs 0.879 (registration off by <= 0.43 px; the moved stain is also resampled
    # twice, when written and when read) and 0.372 unregistered
    assert abs(f1["moved"] - f1["plain"]) <= 0.03
    assert f1["unregistered"] < f1["plain"] - 0.2


@pytest.mark.ray
@pytest.mark.parametrize("variant", ["stseg", "paper"])
def test_tile_invariance_with_a_transformed_stain(tmp_path, ray_module, variant):
    chip = transformed_chip(tmp_path, 200, 2, {"rotation_deg": 180, "flip": True, "scale": 0.97})
    items = [
        *QUIET,
        "cells.method=membrane",
        TRACK,
        f"cells.membrane.variant={variant}",
        "cells.membrane.block_um=24",
    ]
    one, many, (a, _), (b, _) = one_tile_vs_many(chip, tmp_path, items, tile_um=48)
    assert one["n_tiles"] == 1 and many["n_tiles"] >= 9
    np.testing.assert_array_equal(a, b)
