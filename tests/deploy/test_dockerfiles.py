"""deploy/Dockerfile, checked without building it (no docker here): parsed stage by stage for both
variants, plus the two things that can run here: the login-shell PATH fix under Debian's own
/etc/profile, and the base-image pin script against a stand-in ``docker``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
PROFILE_SCRIPT = DEPLOY / "profile.d" / "stseg-venv.sh"
INSTRUCTIONS = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}
VARIANTS = ("cpu", "gpu")
HEAVY = ("torch", "torchvision", "ray[default]", "cellpose")


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; unknown instructions are errors."""
    out, buf = [], ""
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith(
            "#"
        ):  # also inside a continuation, as docker does
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


def global_args(ins) -> dict[str, str]:
    out = {}
    for i, a in ins:
        if i == "FROM":
            break
        if i == "ARG":
            name, _, default = a.partition("=")
            out[name] = default
    return out


def stages(ins) -> dict[str, tuple[str, list]]:
    """Name -> (FROM argument, instructions of that stage)."""
    out, cur = {}, None
    for i, a in ins:
        if i == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", a, re.IGNORECASE)
            assert m, f"every stage is named: FROM {a}"
            cur = out[m.group(2)] = (m.group(1), [])
        elif cur is not None:
            cur[1].append((i, a))
    return out


def chain(variant: str) -> tuple[str, list[tuple[str, str]]]:
    """The base image and the instructions, in order, of ``--build-arg VARIANT=variant``."""
    ins = parse(DOCKERFILE)
    args = {**global_args(ins), "VARIANT": variant}
    st = stages(ins)
    name = list(st)[-1]
    steps: list = []
    while True:
        src, body = st[name]
        steps = body + steps
        src = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], src)
        if src not in st:
            return src, steps
        name = src


def pins() -> dict[str, str]:
    d = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not pinned with =="
            d[name.lower().replace("_", "-")] = ver
    return d


def test_one_dockerfile_one_python_build():
    assert sorted(p.name for p in DEPLOY.glob("Dockerfile*")) == [
        "Dockerfile",
        "Dockerfile.dockerignore",
    ]
    base = global_args(parse(DOCKERFILE))["PYTHON_IMAGE"]
    m = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base)
    assert m, f"PYTHON_IMAGE={base}: an exact python:3.X.Y-slim-<debian> tag pinned by digest"
    assert m.group(1) == f"{sys.version_info[0]}.{sys.version_info[1]}", (
        "the image runs the tested Python minor"
    )
    for v in VARIANTS:
        assert chain(v)[0] == base, f"VARIANT={v} must start from PYTHON_IMAGE like the others"


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant(variant):
    _, steps = chain(variant)
    runs = " ".join(a for i, a in steps if i == "RUN")
    envs = " ".join(a for i, a in steps if i == "ENV")
    p = pins()
    for pkg in HEAVY:
        m = re.search(re.escape(pkg) + r"==([0-9][^\s\"']*)", runs)
        assert m, f"{variant}: {pkg} not pinned"
        assert m.group(1).split("+")[0] == p[pkg.split("[")[0]], (
            f"{variant}: {pkg} differs from constraints.txt"
        )
    torch = re.search(r"torch==(\S+)", runs).group(1)
    if variant == "cpu":
        assert torch.endswith("+cpu") and "download.pytorch.org/whl/cpu" in runs
        assert "NVIDIA" not in envs, "a CPU pod must not ask the NVIDIA runtime for GPUs"
    else:
        assert "+" not in torch and "whl/cpu" not in runs, "PyPI's torch brings the CUDA wheels"
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in envs
        assert "NVIDIA_VISIBLE_DEVICES" not in envs, "the device plugin chooses the GPUs"
    installs = [
        c
        for a in (a for i, a in steps if i == "RUN")
        for c in re.findall(r"pip install ([^&]*)", a)
    ]
    assert len(installs) >= 3
    for args in installs:
        assert args.startswith("-c constraints.txt "), (
            f"{variant}: unconstrained pip install {args!r}"
        )
    assert re.search(r"pip install -c constraints\.txt /opt/stseg", runs), (
        "the package itself is installed"
    )
    assert "wget" in runs, "KubeRay health probes need wget"
    assert "/opt/venv/bin" in envs, "ray and stseg must be on PATH for exec'd commands"
    users = [k for k, (i, _) in enumerate(steps) if i == "USER"]
    assert users and steps[users[-1]][1].split(":")[0] not in ("root", "0"), (
        "must end as a non-root USER"
    )
    after = " ".join(a for i, a in steps[users[-1] :] if i == "RUN")
    assert not re.search(r"pip install|apt-get", after), "nothing is installed as the non-root user"
    assert "bash -lc" in after and "ray --version" in after and "python_version()" in after, (
        "smoke test: ray found by a login shell as the Ray user, and the versions printed"
    )


def _dockerignore_allows(path: str) -> bool:
    allowed = False
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg, pat = line.startswith("!"), line.lstrip("!").rstrip("/")
        if pat == "*" or path == pat or path.startswith(pat + "/"):
            allowed = neg
    return allowed


def test_copies_are_in_the_build_context_and_profile_script_installed():
    ins = parse(DOCKERFILE)
    copies = [shlex.split(a) for i, a in ins if i == "COPY"]
    for words in copies:
        for src in words[:-1]:
            assert _dockerignore_allows(src), f"COPY {src}: excluded by Dockerfile.dockerignore"
            assert (ROOT / src).exists(), src
    assert ["deploy/profile.d/stseg-venv.sh", "/etc/profile.d/stseg-venv.sh"] in copies


def test_constraints_match_the_tested_environment():
    from importlib.metadata import version

    p = pins()
    for pkg in ("torch", "ray", "cellpose", "zarr", "numpy", "pyarrow"):
        assert p[pkg] == version(pkg).split("+")[0], (
            f"constraints.txt pins {pkg}=={p[pkg]}, tests run {version(pkg)}"
        )
    assert "nvidia-cudnn-cu13" in p, "the CUDA user-space wheels torch needs are pinned"


def test_parser_rejects_broken_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN echo a \\\n")
    with pytest.raises(ValueError, match="dangling"):
        parse(bad)
    bad.write_text("FROM python:3.11-slim\nRUNN echo a\n")
    with pytest.raises(ValueError, match="RUNN"):
        parse(bad)


# ---- the login-shell PATH (KubeRay 1.2-1.3 run `/bin/bash -lc ... ray start`) -------------------


def _debian_profile() -> str:
    p = Path("/etc/profile")
    text = p.read_text() if p.exists() else ""
    if "/etc/profile.d" not in text or 'PATH="/usr/local/bin:/usr/bin:/bin' not in text:
        pytest.skip("needs Debian's /etc/profile (the one python:3.11-slim-bookworm has)")
    return text


def _as_nonroot(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("runuser"):
        pytest.skip("running as root without runuser: cannot run the shell as a non-root user")
    return ["runuser", "-u", "nobody", "--", *cmd]


@pytest.mark.parametrize("with_script", [True, False])
def test_login_shell_finds_the_venv(with_script):
    """Debian's /etc/profile resets PATH for a non-root login shell; our profile.d script puts the
    venv back. Without it (the control) `ray` is not found, as issue 19 saw on KubeRay 1.2.
    """
    profile = _debian_profile()
    with tempfile.TemporaryDirectory() as d:  # not pytest's tmp_path: that is private to root
        os.chmod(d, 0o755)
        etc = Path(d)
        venv = (
            etc / "opt-venv"
        )  # stands in for /opt/venv: the question is only whether PATH reaches it
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "ray").write_text('#!/bin/sh\necho "ray, version 2.60.0"\n')
        (etc / "profile.d").mkdir()
        for folder in (etc / "profile.d", venv, venv / "bin"):
            os.chmod(folder, 0o755)
        os.chmod(venv / "bin" / "ray", 0o755)
        if with_script:
            shutil.copy(PROFILE_SCRIPT, etc / "profile.d" / "stseg-venv.sh")
        (etc / "profile").write_text(profile.replace("/etc/profile.d", str(etc / "profile.d")))
        for f in (etc / "profile", *(etc / "profile.d").iterdir()):
            f.chmod(f.stat().st_mode | stat.S_IROTH)
        env = {
            "HOME": "/tmp",
            "VIRTUAL_ENV": str(venv),
            "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        }
        cmd = _as_nonroot(
            [
                "env",
                "-i",
                *(f"{k}={v}" for k, v in env.items()),
                "bash",
                "--noprofile",
                "--norc",
                "-c",
                f". {etc / 'profile'}; command -v ray && ray --version",
            ]
        )
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    if with_script:
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == f"{venv}/bin/ray"
        assert r.stdout.splitlines()[1] == "ray, version 2.60.0"
    else:
        assert r.returncode != 0 and "ray" not in r.stdout, (
            "control: the reset PATH should lose the venv"
        )


# ---- base image pin ------------------------------------------------------------------------------


def _pin(tmp_path, answer: str, *args):
    (tmp_path / "deploy").mkdir(exist_ok=True)
    shutil.copy(DOCKERFILE, tmp_path / "deploy" / "Dockerfile")
    shutil.copy(DEPLOY / "pin-base-image.sh", tmp_path / "deploy" / "pin-base-image.sh")
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    fake = bin_ / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/docker-args\necho "{answer}"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:/usr/bin:/bin"}
    r = subprocess.run(
        ["sh", str(tmp_path / "deploy" / "pin-base-image.sh"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return r, global_args(parse(tmp_path / "deploy" / "Dockerfile"))["PYTHON_IMAGE"]


def test_pin_script_rewrites_the_base_image(tmp_path):
    digest = "sha256:" + "ab" * 32
    r, image = _pin(tmp_path, digest, "python:3.11.99-slim-bookworm")
    assert r.returncode == 0, r.stderr
    assert image == f"python:3.11.99-slim-bookworm@{digest}"
    assert (
        "imagetools inspect python:3.11.99-slim-bookworm" in (tmp_path / "docker-args").read_text()
    )
    before = global_args(parse(DOCKERFILE))["PYTHON_IMAGE"]
    (tmp_path / "again").mkdir()
    r, image = _pin(tmp_path / "again", digest)
    assert (
        r.returncode == 0 and image == before.split("@")[0] + "@" + digest
    )  # no argument: same tag
    (tmp_path / "bad").mkdir()
    r, image = _pin(tmp_path / "bad", "not-a-digest")
    assert r.returncode != 0 and "no digest" in r.stderr and image == before


# CUDA major of the pinned runtime wheel -> the oldest NVIDIA Linux driver it runs on (CUDA release
# notes, "CUDA Toolkit and Corresponding Driver Versions": 12.x needs >= 525, 13.x needs >= 580)
MIN_DRIVER = {"12": 525, "13": 580}


def test_gpu_image_states_and_requires_the_driver_its_cuda_needs():
    cuda = pins()["nvidia-cuda-runtime"].split(".")[0]
    _, steps = chain("gpu")
    envs = " ".join(a for i, a in steps if i == "ENV")
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={cuda}.0"' in envs, (
        "the NVIDIA runtime refuses an older driver"
    )
    assert "NVIDIA_REQUIRE_CUDA" not in " ".join(a for i, a in chain("cpu")[1] if i == "ENV")
    driver = f"driver >= {MIN_DRIVER[cuda]}"
    for text in (DOCKERFILE.read_text(), (ROOT / "docs" / "cluster.md").read_text()):
        assert driver in text, f"name the NVIDIA {driver} that CUDA {cuda} needs"


def test_image_ships_the_config_presets():
    copies = [shlex.split(a) for i, a in parse(DOCKERFILE) if i == "COPY"]
    assert ["configs", "/opt/stseg/configs"] in copies
    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml")), "presets to ship"
    smoke = " ".join(a for i, a in chain("cpu")[1] if i == "RUN")
    assert "stseg batch --check" in smoke and "/opt/stseg/configs/*.yaml" in smoke
