"""Static checks of deploy/Dockerfile (GPU) and deploy/Dockerfile.cpu: parsed, not built (no docker here)."""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; unknown instructions are errors."""
    out, buf = [], ""
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        if word.upper() not in INSTRUCTIONS:
            raise ValueError(f"{path}:{n}: unknown instruction {word!r}")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf:
        raise ValueError(f"{path}: dangling line continuation at end of file")
    return out


def pins() -> dict[str, str]:
    d = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not pinned with =="
            d[name.lower().replace("_", "-")] = ver
    return d


@pytest.mark.parametrize("name, base", [("Dockerfile", r"^nvidia/cuda:\d+\.\d+\.\d+-\S*runtime-ubuntu"),
                                        ("Dockerfile.cpu", r"^python:3\.11-slim")])
def test_dockerfile(name, base):
    ins = parse(DEPLOY / name)
    assert ins[0][0] == "FROM" and re.match(base, ins[0][1]), ins[0]
    assert ":latest" not in ins[0][1]
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must end as a non-root USER"
    last_user = max(k for k, (i, _) in enumerate(ins) if i == "USER")
    assert all(i != "RUN" for i, _ in ins[last_user:]), "no RUN after switching to the non-root user"
    runs = " ".join(a for i, a in ins if i == "RUN")
    p = pins()
    # the heavy dependencies are pinned to exactly the tested versions
    for pkg in ("torch", "torchvision", "ray[default]", "cellpose"):
        m = re.search(re.escape(pkg) + r"==([0-9][^\s\"']*)", runs)
        assert m, f"{name}: {pkg} not pinned"
        assert m.group(1) == p[pkg.split("[")[0]], f"{name}: {pkg}=={m.group(1)} differs from constraints.txt"
    # every pip install is constrained by the lock (or is the CPU torch index install)
    for cmd in re.split(r"&&", runs):
        words = shlex.split(cmd)
        if words[:2] == ["pip", "install"]:
            assert "-c" in words or "--index-url" in words, f"{name}: unconstrained {cmd.strip()!r}"
    assert re.search(r"pip install -c constraints\.txt /opt/stseg", runs), "the package itself is installed"
    copies = [a for i, a in ins if i == "COPY"]
    assert any(a.startswith("deploy/constraints.txt") for a in copies)
    assert any(a.startswith("stseg_dist") for a in copies)
    assert "wget" in runs, "KubeRay health probes need wget"
    envs = " ".join(a for i, a in ins if i == "ENV")
    assert "/opt/venv/bin" in envs, "ray and stseg must be on PATH for KubeRay's `ray start`"
    assert (DEPLOY / f"{name}.dockerignore").exists()


def test_gpu_and_cpu_torch_builds():
    gpu = " ".join(a for i, a in parse(DEPLOY / "Dockerfile") if i == "RUN")
    cpu = " ".join(a for i, a in parse(DEPLOY / "Dockerfile.cpu") if i == "RUN")
    assert "download.pytorch.org/whl/cpu" in cpu
    assert "whl/cpu" not in gpu
    assert "nvidia-cudnn-cu13" in pins(), "the CUDA user-space wheels torch needs are pinned"


def test_constraints_match_the_tested_environment():
    from importlib.metadata import version

    p = pins()
    for pkg in ("torch", "ray", "cellpose", "zarr", "numpy", "pyarrow"):
        assert p[pkg] == version(pkg), f"constraints.txt pins {pkg}=={p[pkg]}, tests run {version(pkg)}"


def test_parser_rejects_broken_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN echo a \\\n")
    with pytest.raises(ValueError, match="dangling"):
        parse(bad)
    bad.write_text("FROM python:3.11-slim\nRUNN echo a\n")
    with pytest.raises(ValueError, match="RUNN"):
        parse(bad)
