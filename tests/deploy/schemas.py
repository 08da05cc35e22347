"""Offline validation of Kubernetes documents: core kinds through kubernetes-validate, custom resources
(Kueue, LeaderWorkerSet) through the openAPIV3Schema of their CRDs in shared/schemas/crds."""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# The oldest Kubernetes these manifests target, and the newest the installed kubernetes-validate knows.
MIN_K8S_VERSION = "1.31.0"


def _origin_checkout() -> Path | None:
    """For a local clone (`git clone . $(mktemp -d)`), the checkout it was cloned from."""
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True, text=True, check=False, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url)
    return path if url and path.is_absolute() and path.is_dir() else None


def schemas_dir() -> Path:
    """shared/schemas/crds, beside the checkout (as on CI), inside it (as on the device machine), or beside the
    checkout a local clone came from."""
    candidates = [ROOT / "shared" / "schemas" / "crds", ROOT.parent / "shared" / "schemas" / "crds"]
    origin = _origin_checkout()
    if origin is not None:
        candidates.append(origin.parent / "shared" / "schemas" / "crds")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    pytest.fail(
        "CRD schemas not found: looked in "
        + " and ".join(str(c) for c in candidates)
        + ". The Kueue and LeaderWorkerSet manifests cannot be validated without shared/schemas/crds "
        "(see shared/schemas/README.md); restore that folder beside the checkout.",
        pytrace=False,
    )


def k8s_versions() -> list[str]:
    known = set(kubernetes_validate.utils.all_versions())
    wanted = {MIN_K8S_VERSION, kubernetes_validate.latest_version()}
    return sorted(wanted & known, key=lambda v: tuple(int(p) for p in v.split(".")))


def _load(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> {"schema": strict openAPIV3Schema, "scope": Cluster|Namespaced}, served versions."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(schemas_dir().glob("*.yaml")):
        crd = _load(path)
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", False):
                continue
            api_version = f"{spec['group']}/{version['name']}"
            schema = strict(version["schema"]["openAPIV3Schema"])
            out[(api_version, spec["names"]["kind"])] = {"schema": schema, "scope": spec["scope"]}
    return out


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as an API server with strict field validation applies it: unknown fields are errors."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-int-or-string"):
                node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def is_custom(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group.endswith(".x-k8s.io")


def validate(doc: dict[str, Any]) -> None:
    """Raise AssertionError naming the document and the first problem."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')})"
    if is_custom(doc):
        entry = crd_schemas().get((doc["apiVersion"], doc["kind"]))
        assert entry is not None, f"{name}: no served CRD version in {schemas_dir()} for this apiVersion/kind"
        errors = sorted(
            jsonschema.Draft7Validator(entry["schema"]).iter_errors(doc), key=lambda e: list(e.absolute_path)
        )
        assert not errors, f"{name}: {errors[0].message} at {'.'.join(map(str, errors[0].absolute_path))}"
        return
    for version in k8s_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.absolute_path))
            raise AssertionError(f"{name} on Kubernetes {version}: {exc.message} at {path}") from None
        except kubernetes_validate.SchemaNotFoundError:
            raise AssertionError(f"{name}: Kubernetes {version} has no such kind") from None


def cluster_scoped(doc: dict[str, Any]) -> bool:
    if is_custom(doc):
        entry = crd_schemas().get((doc["apiVersion"], doc["kind"]))
        return entry is not None and entry["scope"] == "Cluster"
    return doc["kind"] in {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}
