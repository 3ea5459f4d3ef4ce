"""Which KubeRay versions an overlay or component targets.

Every component under deploy/kuberay/components says the oldest KubeRay it works with on a line
``# KubeRay: vX.Y.Z+`` (a field its patches add appears in that version's CRD). An overlay targets
the vendored KubeRay versions at or above the newest minimum among the components it uses, so a
component for newer KubeRay is validated only against the CRDs that have its fields, and the test
can check that the older CRDs really reject them.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .k8s_schema import KUBERAY_VERSIONS

MIN_LINE = re.compile(r"^# KubeRay: (v\d+\.\d+\.\d+)\+$", re.MULTILINE)


def version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.lstrip("v").split("."))


def component_minimum(folder: Path) -> str:
    """The ``# KubeRay: vX.Y.Z+`` line of a component; an error when it has none."""
    text = (folder / "kustomization.yaml").read_text()
    found = MIN_LINE.findall(text)
    if len(found) != 1:
        raise ValueError(f"{folder}/kustomization.yaml: needs one line '# KubeRay: vX.Y.Z+'")
    return found[0]


def components_used(folder: Path) -> list[Path]:
    """Every component a kustomization uses, through its resources too."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    out = [(folder / c).resolve() for c in k.get("components", [])]
    for res in k.get("resources", []):
        if (folder / res).is_dir():
            out += components_used(folder / res)
    return out


def targets(folder: Path) -> list[str]:
    """The vendored KubeRay versions that ``folder`` (an overlay) is meant for."""
    floor = max(
        (version(component_minimum(c)) for c in components_used(Path(folder))), default=(0,)
    )
    return [v for v in KUBERAY_VERSIONS if version(v) >= floor]
