"""The package installs and runs as users get it: `pip install .` with no extras.

CI installs `.[test]`, which would hide a runtime import that only a test extra provides (the
report's matplotlib did exactly that), so the static check below maps every import in the
package to a distribution, and the slow test builds a clean venv, installs the wheel without
extras and runs `stseg synth`, `stseg run` and `stseg eval` from it.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "stseg_dist"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0])


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module names imported anywhere in the package -> files."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("stseg_dist", "__future__"):
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_import_is_a_declared_dependency():
    project = _project()
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        _requirement_name(r)
        for name, reqs in project.get("optional-dependencies", {}).items()
        if name != "test"
        for r in reqs
    }
    dists = md.packages_distributions()
    missing = []
    for module, files in sorted(_imports().items()):
        owners = {_norm(d) for d in dists.get(module, [])}
        assert owners, f"{module} (imported in {sorted(files)}) is not installed in the dev venv"
        if not owners & (runtime | extras):
            missing.append(f"{module} ({'/'.join(sorted(owners))}) imported in {sorted(files)}")
    assert not missing, "imports whose distribution is not a runtime dependency: " + "; ".join(
        missing
    )


def test_runtime_dependencies_are_in_the_tested_constraints():
    pins = {}
    for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    missing = [r for r in _project()["dependencies"] if _requirement_name(r) not in pins]
    assert not missing, (
        f"deploy/constraints.txt has no pin for {missing} (the images install from it)"
    )


def _torch_pins() -> list[str]:
    m = re.search(r"^TORCH_PINS\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile has no TORCH_PINS"
    return m.group(1).split()


def _installed_closure(*names: str) -> dict[str, md.Distribution]:
    """The distributions ``names`` need in this venv (requirements followed, extras included),
    by normalised name.
    """
    from packaging.requirements import Requirement

    found: dict[str, md.Distribution] = {}
    todo = [(n, frozenset()) for n in names]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (_norm(name), extras) in done:
            continue
        done.add((_norm(name), extras))
        try:
            dist = found.get(_norm(name)) or md.distribution(name)
        except md.PackageNotFoundError:
            continue  # a requirement whose marker excludes this platform
        found[_norm(name)] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((req.name, frozenset(req.extras)))
    return found


def _link_torch_pins(venv: Path, pins: list[str]) -> None:
    """Make the torch pins, and everything they bring, importable in ``venv`` from this venv's
    copies (symlinks in a folder on the venv's path), instead of installing them again: the same
    distributions the Makefile's pin step installs (3 GB with CUDA: two minutes of the test on CI
    went to unpacking them), and no other.
    """
    wanted = dict(pin.split("==") for pin in pins)
    dists = _installed_closure(*wanted)
    for name, version in wanted.items():
        have = dists[_norm(name)].version
        assert have.split("+")[0] == version, (
            f"this venv has {name} {have}, the Makefile pins {version}"
        )
    shelf = venv / "torch-pins"
    shelf.mkdir()
    for dist in dists.values():
        for top in {str(f).split("/")[0] for f in dist.files or []}:
            src = Path(dist.locate_file(top))
            if top in ("..", "__pycache__") or top.endswith(".pth") or not src.exists():
                continue
            if not (shelf / top).exists():
                (shelf / top).symlink_to(src)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "torch-pins.pth").write_text(f"{shelf}\n")


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_clean_install_without_extras_runs_synth_run_eval(tmp_path):
    """A fresh venv (no system site-packages), the torch pins first as the Makefile does (linked
    from this venv, which `make setup` installed from them), then the built wheel with no extras
    under deploy/constraints.txt (as the images install it).
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        PACKAGE, src / "stseg_dist", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    venv = tmp_path / "venv"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    _link_torch_pins(venv, _torch_pins())
    _run([*pip, "wheel", "-q", "--no-deps", src, "-w", tmp_path / "dist"], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("stseg_dist-*.whl"))
    _run(
        [*pip, "install", "-q", "-c", REPO / "deploy" / "constraints.txt", wheel],
        tmp_path,
        env,
        timeout=900,
    )
    t_install = time.perf_counter() - t0

    py = venv / "bin" / "python"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    where = _run(
        [py, "-c", "import stseg_dist; print(stseg_dist.__file__)"], tmp_path, env
    ).stdout.strip()
    assert where.startswith(str(venv)), where
    # No test-only package leaks in: what the run needs must come from the runtime dependencies.
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('pytest', 'moto', 'nbclient') if u.find_spec(m)])"
    )
    leaked = _run([py, "-c", probe], tmp_path, env).stdout.strip()
    assert leaked == "[]", leaked

    stseg = venv / "bin" / "stseg"
    _run(
        [stseg, "synth", "--out", "chip", "--width-um", "60", "--height-um", "60", "--seed", "1"],
        tmp_path,
        env,
    )
    run = _run([stseg, "run", "--chip", "chip", "--out", "run", "--no-progress"], tmp_path, env)
    assert run.stdout.startswith("complete:"), run.stdout
    assert (
        "spatialdata.zarr: not written (pip install 'stseg-dist[spatialdata]'" in run.stderr
    )  # extra absent
    _run([stseg, "eval", "--pred", "run", "--ref", "chip", "--json", "metrics.json"], tmp_path, env)
    for name in (
        "run.json",
        "report.html",
        "cells.parquet",
        "transcripts.parquet",
        "cells.h5ad",
        "labels.zarr",
        "cell_boundaries.parquet",
        "nucleus_boundaries.parquet",
    ):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "metrics.json").stat().st_size > 0
    # the Xenium Explorer export needs no extra; the SpatialData one says which extra it needs
    _run([stseg, "export", "--to", "xenium-explorer", "run"], tmp_path, env)
    assert (tmp_path / "run" / "xenium_explorer" / "experiment.xenium").exists()
    sd = subprocess.run(
        [str(stseg), "export", "--to", "spatialdata", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sd.returncode == 2 and "pip install 'stseg-dist[spatialdata]'" in sd.stderr, sd.stderr
    assert not (tmp_path / "run" / "spatialdata.zarr").exists()
    print(f"clean install {t_install:.0f} s, total {time.perf_counter() - t0:.0f} s")
