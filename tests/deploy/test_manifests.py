"""deploy/k8s: every document valid for its schema, overlays self-consistent, pods hardened."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.conftest import K8S, kustomization_dirs
from tests.deploy.k8s import all_pod_templates, containers, find, one, selector_matches
from tests.deploy.schemas import ROOT, cluster_scoped, crd_schemas, schemas_dir, validate

Docs = list[dict[str, Any]]
DIRS = [str(d.relative_to(K8S)) for d in kustomization_dirs()]
OVERLAYS = ["overlays/dev", "overlays/prod"]

# Created out of band, on purpose (see the prod kustomization): anything else referenced must be rendered.
EXTERNAL = {
    "overlays/dev": set(),
    "overlays/prod": {("Secret", "sparsegate-redis"), ("PersistentVolumeClaim", "sparsegate-models")},
}


def test_crd_schemas_are_present() -> None:
    names = {p.name for p in schemas_dir().glob("*.yaml")}
    assert "leaderworkerset.x-k8s.io_leaderworkersets.yaml" in names
    assert {"ClusterQueue", "LocalQueue", "ResourceFlavor", "WorkloadPriorityClass"} <= {
        kind for _, kind in crd_schemas()
    }


def test_every_yaml_file_parses() -> None:
    files = [*sorted((ROOT / "deploy").rglob("*.y*ml")), ROOT / "docker-compose.yml"]
    assert len(files) > 20
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} holds no document"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_every_manifest_is_used_by_a_kustomization() -> None:
    used: set[Path] = set()
    for directory in kustomization_dirs():
        used |= kustomize.referenced_files(directory)
    on_disk = {p.resolve() for p in K8S.rglob("*.y*ml")}
    assert on_disk - used == set(), "files under deploy/k8s that no kustomization includes"


@pytest.mark.parametrize("directory", DIRS)
def test_documents_validate(rendered: dict[str, Docs], directory: str) -> None:
    docs = rendered[directory]
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(
    ("kind", "where"),
    [("Deployment", ("spec", "template", "spec")), ("LeaderWorkerSet", ("spec", "leaderWorkerTemplate"))],
)
def test_validation_is_strict(prod: Docs, kind: str, where: tuple[str, ...]) -> None:
    # The checks above are only worth something if a misspelt field fails them.
    doc = copy.deepcopy(find(prod, kind)[0])
    node = doc
    for key in where:
        node = node[key]
    node["restartPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="restartPolicyy"):
        validate(doc)


@pytest.mark.parametrize("directory", DIRS)
def test_namespaces_only_on_namespaced_kinds(rendered: dict[str, Docs], directory: str) -> None:
    for doc in rendered[directory]:
        ns = doc["metadata"].get("namespace")
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if cluster_scoped(doc):
            assert ns is None, f"{label} is cluster-scoped but was given namespace {ns!r}"
        elif directory.startswith("overlays/"):
            assert ns, f"{label} has no namespace in {directory}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_namespace_is_created(rendered: dict[str, Docs], overlay: str) -> None:
    namespaces = {d["metadata"]["name"] for d in find(rendered[overlay], "Namespace")}
    used = {d["metadata"]["namespace"] for d in rendered[overlay] if d["metadata"].get("namespace")}
    assert used <= namespaces


@pytest.mark.parametrize("directory", DIRS)
def test_pods_are_hardened(rendered: dict[str, Docs], directory: str) -> None:
    for label, template, _ in all_pod_templates(rendered[directory]):
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, f"{label}: mounts a service account token"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), label
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: no RuntimeDefault seccomp"
        for c in containers(template):
            sc = c.get("securityContext", {})
            where = f"{label} container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{where}: may run as root"
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, f"{where}: runs as uid 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allows privilege escalation"
            assert not sc.get("privileged"), f"{where}: privileged"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: keeps capabilities"
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}: no cpu/memory requests"
            assert "memory" in c.get("resources", {}).get("limits", {}), f"{where}: no memory limit"
            image = c["image"]
            _, tag = kustomize.split_image(image)
            assert tag and tag != "latest", f"{where}: image {image} is not pinned to a tag"


@pytest.mark.parametrize("directory", ["base", "redis", "sim", "overlays/dev", "overlays/prod"])
def test_cpu_only_pods_have_read_only_root(rendered: dict[str, Docs], directory: str) -> None:
    # GPU workers keep a writable root for Triton's and torch's kernel caches; everything else is read-only.
    for label, template, _ in all_pod_templates(rendered[directory]):
        for c in containers(template):
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
                continue
            assert c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, f"{label}: writable root"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered: dict[str, Docs], overlay: str) -> None:
    docs = rendered[overlay]
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    wanted: set[tuple[str, str]] = set()
    for _, template, _ in all_pod_templates(docs):
        spec = template["spec"]
        if "serviceAccountName" in spec:
            wanted.add(("ServiceAccount", spec["serviceAccountName"]))
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
            if "persistentVolumeClaim" in volume:
                wanted.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for c in containers(template):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    wanted.add(("Secret", ref["secretKeyRef"]["name"]))
                if "configMapKeyRef" in ref:
                    wanted.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
    assert wanted - present == EXTERNAL[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods(rendered: dict[str, Docs], overlay: str) -> None:
    docs = rendered[overlay]
    templates = all_pod_templates(docs)
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        matched = [t for _, t, _ in templates if selector_matches(selector, t["metadata"]["labels"])]
        assert matched, f"Service/{service['metadata']['name']} selects no pod"
        ports = {p["name"] for t in matched for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert isinstance(target, int) or target in ports, f"Service/{service['metadata']['name']}: {target}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workload_selectors_match_their_pods(rendered: dict[str, Docs], overlay: str) -> None:
    for doc in rendered[overlay]:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector_matches(doc["spec"]["selector"]["matchLabels"], labels), doc["metadata"]["name"]


def test_gateway_deployment(prod: Docs) -> None:
    deployment = one(prod, "Deployment", "sparsegate-gateway")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    (gateway,) = pod["spec"]["containers"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert gateway["args"] == [
        "serve",
        "--config",
        "/etc/sparsegate/gateway.yaml",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # Prometheus scrapes metrics_port, which serves /metrics without auth; the API port's needs an admin key.
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    env = {e["name"]: e for e in gateway["env"]}
    assert env["SPARSEGATE_METRICS_PORT"]["value"] == str(ports["metrics"])
    assert env["SPARSEGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sparsegate-redis", "key": "url"}
    mount = next(m for m in gateway["volumeMounts"] if m["mountPath"] == "/etc/sparsegate")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    config = one(prod, "ConfigMap", volume["configMap"]["name"])
    assert set(config["data"]) == {"gateway.yaml"}

    hpa = one(prod, "HorizontalPodAutoscaler", "sparsegate-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sparsegate-gateway",
    }
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(prod, "PodDisruptionBudget", "sparsegate-gateway")
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])


def test_dev_overlay_runs_without_gpus_or_kueue(dev: Docs) -> None:
    assert not [d for d in dev if d["apiVersion"].startswith(("kueue.", "leaderworkerset."))]
    for label, template, _ in all_pod_templates(dev):
        for c in containers(template):
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), label
    assert one(dev, "Deployment", "sparsegate-gateway")["spec"]["replicas"] == 1
    assert find(dev, "Secret", "sparsegate-redis"), "dev generates its own Redis URL Secret"
