"""Small accessors over rendered Kubernetes documents (pod templates, containers, quantities, flags)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

Doc = dict[str, Any]
GPU = "nvidia.com/gpu"

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def quantity(value: str | int | float) -> Decimal:
    match = _QUANTITY.match(str(value))
    assert match and match.group(2) in _SUFFIX, f"not a Kubernetes quantity: {value!r}"
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(label, pod template) for every pod template a workload holds."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield f"{kind}/{name}", doc["spec"]["template"]
    elif kind == "LeaderWorkerSet":
        lwt = doc["spec"]["leaderWorkerTemplate"]
        if "leaderTemplate" in lwt:
            yield f"{kind}/{name} leader", lwt["leaderTemplate"]
        yield f"{kind}/{name} worker", lwt["workerTemplate"]


def all_pod_templates(docs: list[Doc]) -> list[tuple[str, Doc, Doc]]:
    return [(label, tpl, doc) for doc in docs for label, tpl in pod_templates(doc)]


def containers(template: Doc) -> list[Doc]:
    spec = template["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def env_value(container: Doc, name: str) -> str | None:
    for var in container.get("env", []):
        if var["name"] == name:
            return var.get("value")
    return None


def parse_flags(args: list[str]) -> dict[str, str | None]:
    """`--a=1 --b 2 --c` -> {"--a": "1", "--b": "2", "--c": None}; a repeated flag is an error."""
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"stray argument {arg!r} in {args}"
        if "=" in arg:
            key, _, value = arg.partition("=")
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = arg, args[i + 1]
            i += 2
        else:
            key, value = arg, None
            i += 1
        assert key not in flags, f"{key} given twice"
        flags[key] = value
    return flags


def requests_of(template: Doc) -> dict[str, Decimal]:
    """What Kueue counts for one pod: the sum of its containers' requests (limits stand in for absent requests)."""
    total: dict[str, Decimal] = {}
    for container in template["spec"]["containers"]:
        resources = container.get("resources", {})
        merged = {**resources.get("limits", {}), **resources.get("requests", {})}
        for name, value in merged.items():
            total[name] = total.get(name, Decimal(0)) + quantity(value)
    return total


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def gpu_workloads(docs: list[Doc]) -> list[Doc]:
    """Workloads with a pod that asks for GPUs."""
    return [
        d
        for d in docs
        if any(
            GPU in c.get("resources", {}).get("limits", {})
            for _, template in pod_templates(d)
            for c in template["spec"]["containers"]
        )
    ]
