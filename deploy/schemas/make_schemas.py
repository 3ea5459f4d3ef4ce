"""Vendor the official schemas that tests/deploy validates the KubeRay manifests against.

Run (needs a git clone of ray-project/kuberay with its tags, and the kubernetes-validate wheel from
PyPI, whose schemas are Kubernetes' own OpenAPI converted to JSON Schema):

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    python deploy/schemas/make_schemas.py --kuberay /path/to/kuberay.git \
        --k8s-wheel /tmp/kv/kubernetes_validate-*.whl

Writes, beside this file:

* ``kuberay-<tag>/raycluster.json`` and ``rayjob.json``: ``spec.versions[v1].schema.
  openAPIV3Schema`` of ``ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml`` at the
  oldest and the newest KubeRay tag we support. Why vendored rather than hand-written: the API
  server validates against exactly this.
* ``k8s-<version>/core-v1.json``: Kubernetes' ``core/v1`` PodTemplateSpec, ConfigMap,
  ServiceAccount, ``networking/v1`` NetworkPolicy and ObjectMeta with every definition they
  reference, at the Kubernetes API version the oldest KubeRay embeds (its go.mod's k8s.io/api).

Transformations, all lossless for validation: ``description`` keywords are dropped, the CRDs'
``status`` is dropped (a manifest never sets it), repeated subtrees of a schema are moved once into
``$defs`` and referenced (the pod template appears up to four times per CRD), and the JSON is
written one key per line. Each file's ``$comment`` names its source (repository, tag, commit, path,
sha256 of the source file). Strict unknown-field checking is *not* baked in:
tests/deploy/k8s_schema.py adds it when loading, following the structural-schema rules the API
server uses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KUBERAY_TAGS = ("v1.2.2", "v1.7.0")  # oldest and newest supported KubeRay; README names this range
KUBERAY_CRDS = {
    "raycluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "rayjob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
}
K8S_VERSION = (
    "v1.30.0"  # KubeRay v1.2.2 builds against k8s.io/api v0.30.2: the Pod API its CRDs embed
)
K8S_ROOTS = (
    "io.k8s.api.core.v1.PodTemplateSpec",
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.core.v1.ServiceAccount",
    "io.k8s.api.networking.v1.NetworkPolicy",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
)
DEDUP_MIN_CHARS = (
    800  # subtrees at least this long (as compact JSON) that occur twice or more go to $defs
)

SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SCHEMA_ONE = (
    "additionalProperties",
    "items",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
)


def drop_descriptions(node):
    """Remove the ``description`` keyword from every schema node (not from property *names*)."""
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "description":
            continue
        if k in SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: drop_descriptions(s) for name, s in v.items()}
        elif k in SCHEMA_LISTS and isinstance(v, list):
            out[k] = [drop_descriptions(s) for s in v]
        elif k in SCHEMA_ONE and isinstance(v, dict):
            out[k] = drop_descriptions(v)
        else:
            out[k] = v
    return out


def _canon(node) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def _subschemas(node, path=()):
    """(path, schema) of every schema node below ``node``, in a fixed order, outside $defs."""
    if not isinstance(node, dict):
        return
    for k in sorted(node):
        v = node[k]
        if k in ("properties", "patternProperties", "dependentSchemas") and isinstance(v, dict):
            for name in sorted(v):
                yield (*path, k, name), v[name]
                yield from _subschemas(v[name], (*path, k, name))
        elif k in SCHEMA_LISTS and isinstance(v, list):
            for i, s in enumerate(v):
                yield (*path, k, i), s
                yield from _subschemas(s, (*path, k, i))
        elif k in SCHEMA_ONE and isinstance(v, dict):
            yield (*path, k), v
            yield from _subschemas(v, (*path, k))


def _replace(node, target: str, ref: dict):
    if not isinstance(node, dict):
        return node
    if _canon(node) == target:
        return dict(ref)
    out = {}
    for k, v in node.items():
        if k in ("properties", "patternProperties", "dependentSchemas", "$defs") and isinstance(
            v, dict
        ):
            out[k] = {name: _replace(s, target, ref) for name, s in v.items()}
        elif k in SCHEMA_LISTS and isinstance(v, list):
            out[k] = [_replace(s, target, ref) for s in v]
        elif k in SCHEMA_ONE and isinstance(v, dict):
            out[k] = _replace(v, target, ref)
        else:
            out[k] = v
    return out


def dedupe(schema: dict) -> dict:
    """Move each subtree that occurs more than once (largest first) into ``$defs`` and $ref it."""
    schema = dict(schema)
    defs = dict(schema.pop("$defs", {}))
    while True:
        seen: dict[str, list] = {}
        roots = [((), schema)] + [(("$defs", n), s) for n, s in sorted(defs.items())]
        for base, root in roots:
            for path, sub in _subschemas(root, base):
                if isinstance(sub, dict) and "$ref" not in sub:
                    seen.setdefault(_canon(sub), []).append(path)
        repeated = [
            (len(c), c, paths)
            for c, paths in seen.items()
            if len(paths) > 1 and len(c) >= DEDUP_MIN_CHARS
        ]
        if not repeated:
            break
        _, canon, paths = max(repeated, key=lambda t: (t[0], t[1]))
        named = [p[-1] for p in paths if isinstance(p[-1], str) and p[-1] not in SCHEMA_ONE]
        stem = named[0] if named else "schema"
        name = f"{stem}-{hashlib.sha256(canon.encode()).hexdigest()[:8]}"
        ref = {"$ref": f"#/$defs/{name}"}
        schema = _replace(schema, canon, ref)
        defs = {n: (s if n == name else _replace(s, canon, ref)) for n, s in defs.items()}
        defs[name] = json.loads(canon)
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


def inline(node, defs: dict):
    """Undo :func:`dedupe` (used to check that it lost nothing)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return inline(defs[ref[len("#/$defs/") :]], defs)
        return {k: inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [inline(v, defs) for v in node]
    return node


def write(path: Path, schema: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, sort_keys=True, indent=0, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size // 1024} KiB)")


def kuberay(repo: Path) -> None:
    def git(*args) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(repo), *args], check=True, capture_output=True, text=True
        ).stdout

    for tag in KUBERAY_TAGS:
        commit = git("rev-parse", f"{tag}^{{commit}}").strip()
        for name, src in KUBERAY_CRDS.items():
            text = git("show", f"{tag}:{src}")
            crd = yaml.safe_load(text)
            v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
            schema = drop_descriptions(v1["schema"]["openAPIV3Schema"])
            schema["properties"].pop("status", None)
            small = dedupe(schema)
            assert inline(small, small.get("$defs", {})) == schema, (
                f"{tag} {name}: dedupe changed the schema"
            )
            schema = small
            schema["$comment"] = (
                f"github.com/ray-project/kuberay {tag} (commit {commit}) {src}, "
                f"sha256 {hashlib.sha256(text.encode()).hexdigest()}: spec.versions[v1]."
                "schema.openAPIV3Schema without descriptions and status; repeated subtrees "
                "moved to $defs. Regenerate with deploy/schemas/make_schemas.py."
            )
            schema["x-stseg-source"] = {
                "repository": "ray-project/kuberay",
                "tag": tag,
                "commit": commit,
                "path": src,
                "kind": crd["spec"]["names"]["kind"],
                "group": crd["spec"]["group"],
                "version": "v1",
            }
            write(HERE / f"kuberay-{tag}" / f"{name}.json", schema)


def kubernetes(wheel: Path) -> None:
    member = f"kubernetes_validate/kubernetes-json-schema/{K8S_VERSION}-local/_definitions.json"
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(member)
    defs = json.loads(raw)["$defs"]
    keep: set[str] = set()

    def visit(name: str) -> None:
        if name in keep:
            return
        keep.add(name)
        walk(defs[name])

    def walk(node) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                visit(ref.rsplit("/", 1)[-1])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for root in K8S_ROOTS:
        visit(root)

    def local_refs(node):
        if isinstance(node, dict):
            return {
                k: (
                    "#/$defs/" + v.rsplit("/", 1)[-1]
                    if k == "$ref" and isinstance(v, str)
                    else local_refs(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [local_refs(v) for v in node]
        return node

    out = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {n: drop_descriptions(local_refs(defs[n])) for n in sorted(keep)},
        "$comment": (
            f"Kubernetes {K8S_VERSION} core/v1 and networking/v1 OpenAPI as JSON Schema, from PyPI "
            f"{wheel.name} member {member} (sha256 {hashlib.sha256(raw).hexdigest()}): the "
            f"definitions reachable from {', '.join(K8S_ROOTS)}, without descriptions. "
            "Regenerate with deploy/schemas/make_schemas.py."
        ),
        "x-stseg-source": {
            "kubernetes": K8S_VERSION,
            "package": wheel.name,
            "member": member,
            "roots": list(K8S_ROOTS),
        },
    }
    write(HERE / f"k8s-{K8S_VERSION}" / "core-v1.json", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--kuberay",
        type=Path,
        required=True,
        help="git dir or clone of ray-project/kuberay with tags",
    )
    ap.add_argument(
        "--k8s-wheel", type=Path, required=True, help="kubernetes_validate-*.whl from PyPI"
    )
    a = ap.parse_args()
    repo = a.kuberay / ".git" if (a.kuberay / ".git").is_dir() else a.kuberay
    kuberay(repo)
    kubernetes(a.k8s_wheel)


if __name__ == "__main__":
    main()
