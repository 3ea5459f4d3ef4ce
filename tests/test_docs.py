"""The README and docs/ stay true to the code: the commands they show parse, the config keys they
name exist, the outputs they list are the ones a run writes, and their links resolve.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import make_blob_chip

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: Pages whose config keys must all exist (design.md also names removed keys, on purpose).
KEY_PAGES = [README, ROOT / "docs" / "methods.md", ROOT / "docs" / "accuracy.md"]
SECTIONS = ("tiling", "nuclei", "cells", "resources", "runtime")
FILE_SUFFIXES = {"parquet", "zarr", "zip", "h5ad", "json", "yaml", "csv", "html", "md", "py"}


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def stseg_commands(text: str) -> list[list[str]]:
    """Every ``stseg ...`` line of the page's bash blocks, continuation lines joined, comments
    cut.
    """
    out = []
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("stseg "):
                out.append(shlex.split(line)[1:])
    return out


def test_readme_starts_with_the_two_commands():
    """The two commands come first, exactly as the Makefile names them."""
    blocks = code_blocks(README.read_text(), "bash")
    assert [b.strip() for b in blocks[:2]] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE) and re.search(
        r"^test:", makefile, re.MULTILINE
    )


def test_readme_stays_short():
    """The README is the user's page; evidence goes to docs/."""
    assert len(README.read_text().splitlines()) < 300


def test_readme_commands_parse_and_their_configs_load():
    """Every stseg command in the README parses, and its --config and --set give a valid config."""
    from stseg_dist.cli import build_parser
    from stseg_dist.config import load_config, parse_set
    from stseg_dist.io.options import parse_reader_options

    commands = stseg_commands(README.read_text())
    assert len(commands) >= 8
    parser = build_parser()
    for argv in commands:
        # optional arguments shown in brackets are each parsed as given
        argv = [a.strip("[]") for a in argv]
        args = parser.parse_args(argv)
        if getattr(args, "config", None) or getattr(args, "set", None):
            load_config(args.config, parse_set(args.set), use_env=False)
        if getattr(args, "reader_option", None):
            parse_reader_options(args.reader_option)


def _config_keys() -> set[str]:
    """Every dotted key of the pipeline config (sections and leaves), as run.json records it."""
    from stseg_dist.config import load_config

    keys: set[str] = set()

    def walk(d: dict, prefix: str) -> None:
        for name, value in d.items():
            keys.add(prefix + name)
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")

    walk(load_config(use_env=False).to_dict(), "")
    return keys


@pytest.mark.parametrize("page", KEY_PAGES, ids=lambda p: p.name)
def test_named_config_keys_exist(page):
    """A dotted key a page names (``cells.ucs.growth_um``, ``nuclei.classical.*``) is a real key."""
    keys = _config_keys()
    named = set()
    for token in re.findall(r"`([^`\n]+)`", page.read_text()):
        for m in re.finditer(rf"\b(?:{'|'.join(SECTIONS)})(?:\.\w+)+", token):
            if m.group(0).rsplit(".", 1)[1] not in FILE_SUFFIXES:  # cells.parquet is a file
                named.add(m.group(0))
    assert named, f"{page.name} names no config key"
    missing = sorted(k for k in named if k not in keys)
    assert not missing, f"{page.name} names config keys that do not exist: {missing}"


def test_readme_outputs_are_what_a_run_writes(tmp_path):
    """The README's outputs table lists every file a run writes, and only those."""
    from stseg_dist import constants as C
    from stseg_dist.driver import run_pipeline
    from stseg_dist.export import DEFAULT_NAMES

    chip = make_blob_chip(tmp_path / "chip", shape=(96, 96), n_nuclei=6, n_transcripts=800)
    run_pipeline(chip, str(tmp_path / "out"), local=True)

    text = README.read_text()
    section = text.split("## Outputs", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE):
        listed |= set(re.findall(r"`([^`]+)`", row))
    written = {p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(("_", "."))}
    # what `stseg run` adds after run_pipeline: the QC report and, with the extra, SpatialData
    written |= {C.REPORT_HTML, DEFAULT_NAMES["spatialdata"]}
    assert listed == written


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_links_resolve(page):
    """Relative links point at files that exist, and #anchors at headings they hold."""

    def slug(heading: str) -> str:
        s = heading.strip().lower().replace("`", "")
        s = re.sub(r"[^\w\- ]", "", s)
        return s.replace(" ", "-")

    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, (
                f"{page.name}: link to {target}: no such heading in {dest.name}"
            )
