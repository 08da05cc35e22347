"""A small kustomize renderer for the features deploy/k8s uses, so the overlays can be validated offline.

It handles `resources` (files and directories), `namespace`, `configMapGenerator` / `secretGenerator` (files
and literals), `images` and strategic-merge `patches` given by path. Generated names carry no content hash;
everything else should match `kubectl kustomize`, which `test_kustomize.py` checks when kubectl is on PATH.
A kustomization using any other field fails loudly here rather than being rendered wrong.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "configMapGenerator",
    "secretGenerator",
    "images",
    "patches",
}

# Kinds kustomize itself knows to be cluster-scoped. Like kustomize, anything else (custom resources included)
# is treated as namespaced and gets the `namespace:` stamped on it.
BUILTIN_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


class KustomizeError(Exception):
    pass


def load_yaml_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization(path: Path) -> Doc:
    data: Doc = yaml.safe_load((path / "kustomization.yaml").read_text())
    unknown = set(data) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}/kustomization.yaml uses {sorted(unknown)}, which this renderer does not support")
    return data


def referenced_files(path: Path) -> set[Path]:
    """Every file a kustomization (and the ones it includes) reads."""
    data = kustomization(path)
    files: set[Path] = {(path / "kustomization.yaml").resolve()}
    for res in data.get("resources", []):
        target = (path / res).resolve()
        files |= referenced_files(target) if target.is_dir() else {target}
    for patch in data.get("patches", []):
        files.add((path / patch["path"]).resolve())
    for gen in data.get("configMapGenerator", []) + data.get("secretGenerator", []):
        files |= {(path / _file_source(f)[1]).resolve() for f in gen.get("files", [])}
    return files


def render(path: Path) -> list[Doc]:
    data = kustomization(path)
    docs: list[Doc] = []
    for res in data.get("resources", []):
        target = (path / res).resolve()
        if not target.exists():
            raise KustomizeError(f"{path}: resource {res} does not exist")
        docs.extend(render(target) if target.is_dir() else load_yaml_docs(target))
    for gen in data.get("configMapGenerator", []):
        docs.append(_generate(path, gen, "ConfigMap"))
    for gen in data.get("secretGenerator", []):
        docs.append(_generate(path, gen, "Secret"))
    for patch in data.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{path}: only `patches: - path: FILE` is supported, got {patch}")
        for body in load_yaml_docs(path / patch["path"]):
            _apply_patch(docs, body, path)
    for image in data.get("images", []):
        for doc in docs:
            _set_images(doc, image)
    namespace = data.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in BUILTIN_CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    _check_unique(docs, path)
    return docs


def _file_source(entry: str) -> tuple[str, str]:
    key, sep, file = entry.partition("=")
    return (key, file) if sep else (Path(entry).name, entry)


def _generate(path: Path, gen: Doc, kind: str) -> Doc:
    values: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, file = _file_source(entry)
        values[key] = (path / file).read_text()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        values[key] = value
    doc: Doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if kind == "Secret":
        doc["type"] = "Opaque"
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    else:
        doc["data"] = values
    return doc


def _apply_patch(docs: list[Doc], body: Doc, path: Path) -> None:
    group = body["apiVersion"].rpartition("/")[0]
    matches = [
        d
        for d in docs
        if d["kind"] == body["kind"]
        and d["metadata"]["name"] == body["metadata"]["name"]
        and d["apiVersion"].rpartition("/")[0] == group
    ]
    if len(matches) != 1:
        raise KustomizeError(f"{path}: patch for {body['kind']}/{body['metadata']['name']} matches {len(matches)}")
    merged = strategic_merge(matches[0], body)
    matches[0].clear()
    matches[0].update(merged)


def strategic_merge(base: Any, patch: Any) -> Any:
    """Maps merge key by key; lists of named maps (containers, env, volumes, ...) merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out_list = list(base)
        index = {item["name"]: i for i, item in enumerate(out_list)}
        added = []
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = strategic_merge(out_list[index[item["name"]]], item)
            else:
                added.append(item)
        # kustomize puts a patch's new list items before the existing ones (checked against kubectl kustomize).
        return added + out_list
    return patch


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def split_image(image: str) -> tuple[str, str | None]:
    """`registry:5000/a/b:tag` -> (`registry:5000/a/b`, `tag`); a digest counts as the tag."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, "@" + digest
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, None


def _set_images(node: Any, rule: Doc) -> None:
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            for container in node.get(key) or []:
                if isinstance(container, dict) and "image" in container:
                    name, tag = split_image(container["image"])
                    if name == rule["name"]:
                        new_tag = rule.get("newTag", tag)
                        container["image"] = rule.get("newName", name) + (f":{new_tag}" if new_tag else "")
        for value in node.values():
            _set_images(value, rule)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, rule)


def _check_unique(docs: list[Doc], path: Path) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace"))
        if key in seen:
            raise KustomizeError(f"{path}: {key} appears twice")
        seen.add(key)
