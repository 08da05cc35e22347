"""Kueue: the workers name queues and priorities that exist, pin exactly one flavor, and fit the quota."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest

from tests.deploy.k8s import GPU, find, gpu_workloads, one, pod_templates, quantity, requests_of, selector_matches

Docs = list[dict[str, Any]]
QUEUE = "kueue.x-k8s.io/queue-name"
PRIORITY = "kueue.x-k8s.io/priority-class"


def _pods(doc: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """(pod template, how many pods of it) for all replicas of a workload."""
    if doc["kind"] == "LeaderWorkerSet":
        replicas, lwt = doc["spec"].get("replicas", 1), doc["spec"]["leaderWorkerTemplate"]
        size = lwt.get("size", 1)
        if "leaderTemplate" in lwt:
            return [(lwt["leaderTemplate"], replicas), (lwt["workerTemplate"], replicas * (size - 1))]
        return [(lwt["workerTemplate"], replicas * size)]
    return [(doc["spec"]["template"], doc["spec"].get("replicas", 1))]


def _flavor_of(template: dict[str, Any], flavors: list[dict[str, Any]]) -> list[str]:
    """The flavors Kueue may assign: those whose nodeLabels the pod's nodeSelector does not contradict."""
    selector = template["spec"].get("nodeSelector", {})
    return [
        f["metadata"]["name"]
        for f in flavors
        if all(selector.get(k, v) == v for k, v in f["spec"].get("nodeLabels", {}).items())
    ]


@pytest.fixture(scope="session")
def single_node(rendered: dict[str, Docs]) -> Docs:
    return rendered["workers/single-node"]


def test_every_gpu_workload_is_queued(prod: Docs, single_node: Docs) -> None:
    workloads = gpu_workloads(prod) + gpu_workloads(single_node)
    assert {w["kind"] for w in workloads} == {"LeaderWorkerSet", "StatefulSet"}
    local_queues = {q["metadata"]["name"]: q for q in find(prod, "LocalQueue")}
    priorities = {p["metadata"]["name"] for p in find(prod, "WorkloadPriorityClass")}
    for w in workloads:
        labels = w["metadata"]["labels"]
        assert labels.get(QUEUE) in local_queues, f"{w['metadata']['name']}: queue {labels.get(QUEUE)!r} missing"
        assert labels.get(PRIORITY) in priorities, f"{w['metadata']['name']}: priority {labels.get(PRIORITY)!r}"


def test_local_queues_reach_admitting_cluster_queues(prod: Docs) -> None:
    namespaces = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in find(prod, "Namespace")}
    for lq in find(prod, "LocalQueue"):
        cq = one(prod, "ClusterQueue", lq["spec"]["clusterQueue"])
        selector = cq["spec"]["namespaceSelector"]
        assert set(selector) == {"matchLabels"}, "only matchLabels selectors are checked here"
        ns_labels = namespaces[lq["metadata"]["namespace"]]
        assert selector_matches(selector["matchLabels"], ns_labels), (
            f"ClusterQueue/{cq['metadata']['name']} does not admit namespace {lq['metadata']['namespace']}"
        )


def test_cluster_queues_are_well_formed(prod: Docs) -> None:
    flavors = {f["metadata"]["name"] for f in find(prod, "ResourceFlavor")}
    queues = find(prod, "ClusterQueue")
    assert len({q["spec"]["cohortName"] for q in queues}) == 1, "the queues share one cohort"
    for cq in queues:
        for group in cq["spec"]["resourceGroups"]:
            assert GPU in group["coveredResources"]
            for flavor in group["flavors"]:
                assert flavor["name"] in flavors
                # Kueue requires each flavor to list the covered resources, in the same order.
                assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]


def test_flavors_match_gpu_product_labels(prod: Docs) -> None:
    products = {
        f["metadata"]["name"]: f["spec"]["nodeLabels"]["nvidia.com/gpu.product"] for f in find(prod, "ResourceFlavor")
    }
    assert sorted(products.values()) == ["NVIDIA-GeForce-RTX-4090", "NVIDIA-L40S"]


@pytest.mark.parametrize("which", ["prod", "single_node"])
def test_each_worker_pins_exactly_one_flavor(prod: Docs, single_node: Docs, which: str) -> None:
    flavors = find(prod, "ResourceFlavor")
    for w in gpu_workloads(prod if which == "prod" else single_node):
        for label, template in pod_templates(w):
            assert len(_flavor_of(template, flavors)) == 1, f"{label}: nodeSelector must pick one ResourceFlavor"


def test_inference_quota_admits_every_prod_group(prod: Docs) -> None:
    flavors = find(prod, "ResourceFlavor")
    used: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for w in gpu_workloads(prod):
        cq = one(prod, "LocalQueue", w["metadata"]["labels"][QUEUE])["spec"]["clusterQueue"]
        for template, count in _pods(w):
            (flavor,) = _flavor_of(template, flavors)
            for resource, amount in requests_of(template).items():
                used[(cq, flavor)][resource] += amount * count
    assert used, "no GPU workloads in prod"
    for (cq_name, flavor_name), need in used.items():
        cq = one(prod, "ClusterQueue", cq_name)
        (group,) = [g for g in cq["spec"]["resourceGroups"] if GPU in g["coveredResources"]]
        (flavor,) = [f for f in group["flavors"] if f["name"] == flavor_name]
        quota = {r["name"]: quantity(r["nominalQuota"]) for r in flavor["resources"]}
        for resource in group["coveredResources"]:
            assert need[resource] <= quota[resource], (
                f"{cq_name}/{flavor_name}: the prod workers need {need[resource]} {resource}, quota {quota[resource]}"
            )
        assert need[GPU] > 0


def test_prod_outranks_batch(prod: Docs) -> None:
    value = {p["metadata"]["name"]: p["value"] for p in find(prod, "WorkloadPriorityClass")}
    assert value["sparsegate-prod"] > value["sparsegate-batch"]
    inference = one(prod, "ClusterQueue", "sparsegate-inference")
    assert inference["spec"]["preemption"]["reclaimWithinCohort"] != "Never"
