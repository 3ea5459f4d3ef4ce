"""docs/cluster.md's walkthrough, checked against what its commands create: the overlays it writes
(heredocs) are rendered, and every namespace, ServiceAccount, Secret (and key), image, ConfigMap key
and object name its commands use must match the rendered manifests.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from stseg_dist.batch import parse_manifest
from stseg_dist.cli import build_parser

from .k8s_schema import KUBERAY_VERSIONS, problems
from .kustomize import render
from .targets import targets
from .test_manifests import KUBECTL, kubectl_render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cluster.md"
START, END = "#### Walkthrough", "#### When a batch fails"
REGISTRY = "registry.test/team"
IMAGE_CONFIGS = "/opt/stseg/configs"


def walkthrough(text: str) -> str:
    assert START in text and END in text, f"docs/cluster.md: sections {START!r} .. {END!r}"
    return text.split(START, 1)[1].split(END, 1)[0]


def commands(section: str) -> list[str]:
    """The shell commands of the section's bash blocks, continuation lines joined, heredocs cut."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        block = re.sub(r"<<EOF\n.*?\nEOF\n", "<<EOF\n", block, flags=re.DOTALL)
        out += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    return [c.split(" #", 1)[0].strip() for c in out if not c.startswith("#")]


def heredocs(section: str) -> dict[str, str]:
    found = re.findall(r"cat > (\S+) <<EOF\n(.*?)\nEOF\n", section, re.DOTALL)
    return {path: body.replace("${REGISTRY}", REGISTRY) + "\n" for path, body in found}


def _secret_refs(node, out: dict, optional=None):
    """{secret name: (keys read, required?)} for every Secret a manifest reads."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "secretRef":
                keys, req = out.get(v["name"], (set(), False))
                out[v["name"]] = (keys, req or not v.get("optional"))
            elif k == "secretKeyRef":
                keys, req = out.get(v["name"], (set(), False))
                out[v["name"]] = (keys | {v["key"]}, req or not v.get("optional"))
            elif k == "authOptions" and v.get("secretName"):
                keys, _ = out.get(v["secretName"], (set(), False))
                out[v["secretName"]] = (keys | {"auth_token"}, True)
            else:
                _secret_refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _secret_refs(v, out)


def _images(node, out: set):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers"):
                out |= {c["image"] for c in v if "image" in c}
            else:
                _images(v, out)
    elif isinstance(node, list):
        for v in node:
            _images(v, out)


def problems_in(text: str, tmp_path: Path) -> list[str]:
    """Every name the walkthrough uses that its manifests do not have (empty: they match)."""
    section = walkthrough(text)
    cmds = commands(section)
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy", work / "deploy")
    written = heredocs(section)
    for path, body in written.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(body)
    out = []
    # the overlays the commands apply or create, rendered
    applied = sorted(
        {m for c in cmds for m in re.findall(r"kubectl (?:apply|create|delete) -k (\S+)", c)}
    )
    docs = []
    for folder in applied:
        if not (work / folder / "kustomization.yaml").exists():
            out.append(f"kubectl ... -k {folder}: no such kustomization")
            continue
        rendered = render(work / folder)
        if KUBECTL:

            def key(ds):
                return {(d["kind"], d["metadata"]["name"]): d for d in ds}

            if key(kubectl_render(work / folder)) != key(rendered):
                out.append(f"{folder}: kubectl kustomize renders something else")
        for d in rendered:
            for v in targets(work / folder):
                out += [f"{folder}: {m}" for m in problems(d, v)]
        docs += rendered
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    namespaces = {d["metadata"]["namespace"] for d in docs}
    # the operator: a pinned chart of the newest validated KubeRay, in the namespace the policies
    # admit
    helm = [c for c in cmds if c.startswith("helm install")]
    operator_ns = set()
    for c in helm:
        version = re.search(r"--version (\S+)", c)
        if not version or "v" + version.group(1) != KUBERAY_VERSIONS[-1]:
            out.append(f"{c!r}: pin the operator chart to {KUBERAY_VERSIONS[-1].lstrip('v')}")
        operator_ns |= set(re.findall(r"--namespace (\S+)", c))
    if not helm or len(operator_ns) != 1:
        out.append("the walkthrough installs the operator with helm, in one namespace")
    for name, pol in by_kind.get("NetworkPolicy", {}).items():
        admitted = {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in pol["spec"]["ingress"]
            for peer in rule["from"]
            if "namespaceSelector" in peer
        }
        if admitted != operator_ns:
            out.append(
                f"NetworkPolicy/{name} admits the operator from {admitted}, not {operator_ns}"
            )
    # namespaces
    created = {n for c in cmds for n in re.findall(r"kubectl create namespace (\S+)", c)}
    for missing in sorted(namespaces - created):
        out.append(f"namespace {missing}: the manifests use it, the walkthrough never creates it")
    used = {n for c in cmds for n in re.findall(r"(?:-n|--namespace) (\S+)", c)}
    used |= set(re.findall(r"system:serviceaccount:([\w-]+):", section))
    used |= set(re.findall(r"svc\.id\.goog\[([\w-]+)/", section))
    for ns in sorted(used - namespaces - operator_ns):
        out.append(f"namespace {ns}: used by the walkthrough, not by its manifests")
    # ServiceAccounts, wherever the walkthrough names one
    accounts = set(by_kind.get("ServiceAccount", {}))
    named = set(re.findall(r"system:serviceaccount:[\w-]+:([\w-]+)", section))
    named |= set(re.findall(r"svc\.id\.goog\[[\w-]+/([\w-]+)\]", section))
    named |= set(re.findall(r"--service-account ([\w-]+)", section))
    named |= set(re.findall(r"ServiceAccount `([\w-]+)`", section))
    for body in written.values():
        for k in [yaml.safe_load(body)] if body.lstrip().startswith("apiVersion") else []:
            for p in k.get("patches", []):
                if p["target"].get("kind") == "ServiceAccount":
                    named.add(p["target"]["name"])
                    sa = by_kind.get("ServiceAccount", {}).get(p["target"]["name"], {})
                    if not (sa.get("metadata", {}).get("annotations")):
                        out.append(
                            f"the identity patch did not reach ServiceAccount {p['target']['name']}"
                        )
    for sa in sorted(named - accounts):
        out.append(
            f"ServiceAccount {sa}: named by the walkthrough, not in its manifests "
            f"{sorted(accounts)}"
        )
    # Secrets and their keys
    refs: dict = {}
    _secret_refs(docs, refs)
    made = {}
    for c in cmds:
        m = re.search(r"create secret generic (\S+)", c)
        if m:
            made[m.group(1)] = set(re.findall(r"--from-literal=(\w+)=", c))
    for name, keys in made.items():
        if name not in refs:
            out.append(f"Secret {name}: created by the walkthrough, read by no manifest")
        elif not refs[name][0] <= keys:
            out.append(
                f"Secret {name}: the manifests read keys {sorted(refs[name][0])}, it has "
                f"{sorted(keys)}"
            )
    for name, (keys, required) in refs.items():
        if required and name not in made:
            out.append(
                f"Secret {name} (keys {sorted(keys)}): required by the manifests, never created"
            )
    for name, key in re.findall(r"get secret (\S+) -o jsonpath='\{\.data\.(\w+)\}'", section):
        if key not in refs.get(name, (set(),))[0]:
            out.append(f"kubectl get secret {name} ... {key}: not a key the manifests read")
    # images: what the pods run is what the walkthrough built and pushed
    built = {b for c in cmds for b in re.findall(r"docker build .*-t (\S+)", c)}
    pushed = {b for c in cmds for b in re.findall(r"docker push (\S+)", c)}
    built, pushed = ({i.replace("${REGISTRY}", REGISTRY) for i in s} for s in (built, pushed))
    images: set = set()
    _images(docs, images)
    for image in sorted(images - pushed):
        out.append(f"image {image}: the pods run it, the walkthrough never pushes it")
    for image in sorted(pushed - built):
        out.append(f"image {image}: pushed, never built")
    # the batch manifest: the key the entry point reads, with the content the walkthrough wrote
    for name, job in by_kind.get("RayJob", {}).items():
        mpath = build_parser().parse_args(job["spec"]["entrypoint"].split()[3:]).manifest
        key = mpath.rsplit("/", 1)[-1]
        cms = list(by_kind.get("ConfigMap", {}).values())
        if not cms or key not in cms[0]["data"]:
            out.append(
                f"RayJob/{name} reads {mpath}; the ConfigMap has keys "
                f"{[list(c['data']) for c in cms]}"
            )
            continue
        text = cms[0]["data"][key]
        if text not in written.values():
            out.append(f"ConfigMap key {key}: not the batch manifest the walkthrough wrote")
        if "PLACEHOLDERS" not in text or "YOUR-BUCKET" not in text:
            out.append("the batch manifest must name its placeholders")
        try:
            parse_manifest(mpath, text=text.replace(IMAGE_CONFIGS, str(ROOT / "configs")))
        except Exception as exc:  # noqa: BLE001 - reported as a problem
            out.append(f"the walkthrough's batch manifest is invalid: {exc}")
    # object names the commands use
    for c in cmds:
        for name in re.findall(r"\b(?:rayjob |job/)([\w-]+)", c):
            if name not in by_kind.get("RayJob", {}):
                out.append(f"{c!r}: no RayJob {name} (KubeRay names the submitter Job after it)")
        for name in re.findall(r"svc/([\w-]+)-head-svc", c):
            if name not in by_kind.get("RayCluster", {}):
                out.append(f"{c!r}: no RayCluster {name}")
        for host in re.findall(r'-v "\$PWD/(\S+?):', c):
            if not (work / host).is_dir():
                out.append(f"{c!r}: mounts {host}, which the walkthrough never writes")
    return out


def test_walkthrough_names_match_the_manifests(tmp_path):
    assert problems_in(DOC.read_text(), tmp_path) == []


MISTAKES = [
    (
        "create secret generic stseg-ray-token",
        "create secret generic stseg-token",
        "stseg-ray-token",
    ),
    ("--from-literal=auth_token=", "--from-literal=token=", "keys ['auth_token']"),
    (
        "kubectl create namespace stseg\n",
        "kubectl create namespace stseg-batch\n",
        "namespace stseg:",
    ),
    ("--namespace kuberay-system", "--namespace ray-system", "admits the operator"),
    ("--version 1.7.0", "--version 1.5.0", "pin the operator chart"),
    ("stseg-dist:0.1.0-cpu .", "stseg-dist:latest .", "never built"),
    ("name: stseg-batch}", "name: stseg-job}", "ServiceAccount stseg-job"),
    ("svc.id.goog[stseg/stseg-batch]", "svc.id.goog[stseg/stseg]", "ServiceAccount stseg:"),
    ("files: [batch.yaml]", "files: [manifest.yaml]", "no such"),
    ("get rayjob stseg-batch", "get rayjob stseg", "no RayJob stseg"),
]


@pytest.mark.parametrize("right, wrong, fragment", MISTAKES, ids=[m[1][:30] for m in MISTAKES])
def test_a_wrong_name_in_the_walkthrough_is_caught(tmp_path, right, wrong, fragment):
    text = DOC.read_text()
    assert walkthrough(text).count(right) >= 1, right
    section = walkthrough(text)
    bad = text.replace(section, section.replace(right, wrong, 1))
    try:
        found = problems_in(bad, tmp_path)
    except (
        FileNotFoundError,
        KeyError,
        ValueError,
    ) as exc:  # e.g. a generator file that is not there
        found = [f"no such file or key: {exc}"]
    assert any(fragment in m for m in found), found
