"""Render a kustomization in Python: the subset of kustomize (v5) that deploy/kuberay uses.

Used where ``kubectl`` is not installed; where it is, tests compare this with ``kubectl kustomize``
so the two cannot drift. Supported: resources (files and folders), components, configMapGenerator
(files, literals, hash suffix or ``disableNameSuffixHash``), JSON 6902 ``patches`` with a target,
``namespace``, ``labels`` (metadata only), ``images`` (any ``containers``/``initContainers`` list,
as kustomize does) and ``configurations`` with ``nameReference``. Anything else in a kustomization
is an error here, so a new feature cannot be silently ignored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import yaml

KNOWN = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "namespace",
    "labels",
    "images",
    "configurations",
}


def _ptr(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: dict, ops: list[dict]) -> dict:
    """Apply RFC 6902 add/replace/remove; a missing path is an error, as in kustomize."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _ptr(op["path"])
        cur = doc
        for p in parents:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        key = int(last) if isinstance(cur, list) and last != "-" else last
        if op["op"] == "replace":
            if isinstance(cur, list):
                cur[key]  # IndexError: the path must exist
            elif key not in cur:
                raise KeyError(f"replace: {op['path']} does not exist")
            cur[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(cur, list):
                cur.insert(len(cur) if key == "-" else key, op["value"])
            else:
                cur[key] = op["value"]
        elif op["op"] == "remove":
            del cur[key]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


def configmap_hash(cm: dict) -> str:
    """Kustomize's name suffix: sha256 of the Go JSON of {kind, name, data}, re-lettered."""
    m = {"data": cm.get("data", {}), "kind": "ConfigMap", "name": cm["metadata"]["name"]}
    if cm.get("binaryData"):
        m["binaryData"] = cm["binaryData"]
    enc = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for a, b in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        enc = enc.replace(a, b)
    digest = hashlib.sha256(enc.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        name, _, rest = image.partition("@")
        return name, "@" + rest
    slash = image.rfind("/")
    colon = image.rfind(":")
    return (image[:colon], image[colon:]) if colon > slash else (image, "")


def _set_images(node, images: list[dict]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                for c in v:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        name, ref = _split_image(c["image"])
                        for im in images:
                            if im["name"] == name:
                                ref = (
                                    ("@" + im["digest"])
                                    if im.get("digest")
                                    else (":" + str(im["newTag"]))
                                    if "newTag" in im
                                    else ref
                                )
                                c["image"] = im.get("newName", name) + ref
                                break
            _set_images(v, images)
    elif isinstance(node, list):
        for v in node:
            _set_images(v, images)


def _matches(doc: dict, target: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return all(
        [
            target.get("kind", doc["kind"]) == doc["kind"],
            target.get("group", group) == group,
            target.get("version", version) == version,
            re.fullmatch(target.get("name", ".*"), doc["metadata"]["name"]) is not None,
        ]
    )


def _generate(folder: Path, k: dict, docs: list[dict]) -> list[dict]:
    """``docs`` with the kustomization's ConfigMaps added (or by ``behavior`` replaced, merged)."""
    out = list(docs)
    for g in k.get("configMapGenerator", []):
        data = {}
        for f in g.get("files", []):
            key, _, fname = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = (folder / fname).read_text()
        for lit in g.get("literals", []):
            key, _, val = lit.partition("=")
            data[key] = val
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": g["name"]},
            "data": data,
        }
        behavior = g.get("behavior", "create")
        if behavior in ("replace", "merge"):
            old = [
                d for d in out if d["kind"] == "ConfigMap" and d["metadata"]["name"] == g["name"]
            ]
            if len(old) != 1:
                raise ValueError(f"{folder}: {behavior} of ConfigMap {g['name']}: found {len(old)}")
            old[0]["data"] = data if behavior == "replace" else {**old[0].get("data", {}), **data}
            continue
        if behavior != "create":
            raise ValueError(f"{folder}: configMapGenerator behavior {behavior!r}")
        opts = {**k.get("generatorOptions", {}), **g.get("options", {})}
        if not opts.get("disableNameSuffixHash"):
            cm["metadata"]["annotations"] = {"stseg.test/original-name": g["name"]}
        out.append(cm)
    return out


def _name_refs(folder: Path, k: dict) -> list[dict]:
    refs = []
    for c in k.get("configurations", []):
        refs += yaml.safe_load((folder / c).read_text()).get("nameReference", [])
    return refs


def _walk_path(node, parts: list[str], fn) -> None:
    if isinstance(node, list):
        for item in node:
            _walk_path(item, parts, fn)
        return
    if not isinstance(node, dict) or parts[0] not in node:
        return
    if len(parts) == 1:
        node[parts[0]] = fn(node[parts[0]])
    else:
        _walk_path(node[parts[0]], parts[1:], fn)


def _accumulate(folder: Path, docs: list[dict], refs: list[dict], component: bool) -> list[dict]:
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN
    if unknown:
        raise ValueError(
            f"{folder}/kustomization.yaml: {sorted(unknown)} "
            "not supported by tests/deploy/kustomize.py"
        )
    want = "Component" if component else "Kustomization"
    if k.get("kind", "Kustomization") != want:
        raise ValueError(f"{folder}/kustomization.yaml: kind {k.get('kind')!r}, expected {want}")
    for res in k.get("resources", []):
        p = folder / res
        if p.is_dir():
            docs = _accumulate(p, docs, refs, component=False)
        else:
            docs = docs + [d for d in yaml.safe_load_all(p.read_text()) if d]
    refs += _name_refs(folder, k)
    docs = _generate(folder, k, docs)
    for comp in k.get("components", []):
        docs = _accumulate(folder / comp, docs, refs, component=True)
    for patch in k.get("patches", []):
        ops = yaml.safe_load(patch["patch"])
        docs = [json_patch(d, ops) if _matches(d, patch["target"]) else d for d in docs]
    for d in docs:
        if "namespace" in k:
            d["metadata"]["namespace"] = k["namespace"]
        for lab in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(lab["pairs"])
        if k.get("images"):
            _set_images(d, k["images"])
    return docs


def render(folder: Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` prints (ConfigMaps first, as kustomize does)."""
    refs: list[dict] = []
    docs = _accumulate(Path(folder), [], refs, component=False)
    renamed = {}
    for d in docs:
        original = d["metadata"].get("annotations", {}).pop("stseg.test/original-name", None)
        if original:
            if not d["metadata"]["annotations"]:
                del d["metadata"]["annotations"]
            d["metadata"]["name"] = f"{original}-{configmap_hash(d)}"
            renamed[(d["kind"], d["metadata"].get("namespace"), original)] = d["metadata"]["name"]
    for ref in refs:
        for spec in ref["fieldSpecs"]:
            for d in docs:
                if d["kind"] != spec["kind"] or d["apiVersion"].rpartition("/")[0] != spec.get(
                    "group", ""
                ):
                    continue
                ns = d["metadata"].get("namespace")
                _walk_path(
                    d,
                    spec["path"].split("/"),
                    lambda v, ns=ns, kind=ref["kind"]: renamed.get((kind, ns, v), v),
                )
    return sorted(docs, key=lambda d: d["kind"] != "ConfigMap")
