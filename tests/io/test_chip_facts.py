"""The facts methods need are chip.json's (recorded by the readers); an older chip without them
gets its platform's, decided in io/chip.py alone. Methods never see a platform's name.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from stseg_dist.errors import InputError
from stseg_dist.io.bundles import PLATFORMS
from stseg_dist.io.chip import ChipFacts, open_chip, parse_chip_json
from tests.conftest import REPO, make_blob_chip


def _rewrite(chip: str, **changes) -> None:
    path = Path(chip) / "chip.json"
    meta = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))


def test_written_chips_record_the_facts(tmp_path):
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=50)
    meta = json.loads((Path(chip) / "chip.json").read_text())
    assert (meta["bin_um"], meta["spot_capture"], meta["image_source"]) == (
        1.0,
        False,
        "vendor_image",
    )
    assert open_chip(chip).meta.facts == ChipFacts(1.0, False, False)


@pytest.mark.parametrize(
    "platform, facts",
    [
        ("xenium", ChipFacts(1.0, False, False)),
        ("merscope", ChipFacts(1.0, False, False)),
        ("cosmx", ChipFacts(0.5, False, False)),
        ("stereoseq", ChipFacts(0.5, True, True)),
        ("generic", ChipFacts(1.0, False, False)),
    ],
)
def test_an_older_chip_without_facts_gets_its_platforms(tmp_path, platform, facts):
    """Chips written before the facts were recorded still load, with the defaults the methods
    used to derive from the platform's name.
    """
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=50)
    _rewrite(chip, platform=platform, bin_um=None, spot_capture=None, image_source=None)
    assert open_chip(chip).meta.facts == facts


def test_recorded_facts_win_over_the_platform(tmp_path):
    chip = make_blob_chip(tmp_path / "chip", n_transcripts=50)
    _rewrite(chip, platform="stereoseq", bin_um=0.715, spot_capture=None)
    assert open_chip(chip).meta.facts == ChipFacts(0.715, True, False)  # spot_capture: platform's


@pytest.mark.parametrize(
    "key, value",
    [("bin_um", 0), ("bin_um", "fine"), ("spot_capture", "yes"), ("image_source", "ssDNA")],
)
def test_bad_facts_are_refused_naming_the_file_and_key(key, value):
    with pytest.raises(InputError, match=f"chip.json: '{key}' must be"):
        parse_chip_json({"pixel_size_um": 0.5, key: value}, "chip.json")


def test_methods_follow_the_facts_not_the_platform():
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.methods import get_method

    cfg = load_config(overrides=parse_set(["cells.method=ucs"]), use_env=False)
    ucs = get_method("ucs", cfg, ChipFacts(bin_um=0.5, spot_capture=True))
    assert ucs.bin_um == 0.5 and ucs._pos_weight() == 5.0
    assert get_method("ucs", cfg).bin_um == 1.0 and get_method("ucs", cfg)._pos_weight() == 1.0
    assert get_method("sslcst", cfg, ChipFacts(bin_um=0.5)).bin_um == 0.5
    # a platform's name, as the former API passed it, becomes that platform's facts (io/chip.py)
    assert get_method("ucs", cfg, "stereoseq").facts == ChipFacts(0.5, True, True)


def _string_constants(path: Path) -> set[str]:
    """Every string literal in the code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value.lower()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_no_method_or_nuclei_backend_names_a_platform():
    names = {p.lower() for p in PLATFORMS} - {"generic"}
    assert {"xenium", "stereoseq"} <= names
    for package in ("methods", "nuclei"):
        for path in (REPO / "stseg_dist" / package).rglob("*.py"):
            found = {s for s in _string_constants(path) if any(n in s for n in names)}
            assert not found, f"{path.relative_to(REPO)} names a platform: {found}"
