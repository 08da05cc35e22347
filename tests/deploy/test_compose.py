"""docker-compose.yml: the services, their health-gated start order, ports, mounts, and the Prometheus config."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.k8s import parse_flags
from tests.deploy.schemas import ROOT

SERVICES = {"redis", "sim-32k", "sim-128k", "gateway", "prometheus", "grafana"}
PUBLISHED = {"gateway": "8000:8000", "grafana": "3000:3000", "prometheus": "9090:9090"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = compose["services"]
    return svc


def test_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    assert set(services["gateway"]["depends_on"]) == {"redis", "sim-32k", "sim-128k"}
    assert set(services["prometheus"]["depends_on"]) == {"gateway"}
    assert set(services["grafana"]["depends_on"]) == {"prometheus"}
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep} must wait for health"


def test_only_the_front_doors_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert svc.get("ports", []) == ([PUBLISHED[name]] if name in PUBLISHED else []), name


def test_gateway_service(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert gateway["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert gateway["command"] == [
        "serve",
        "--config",
        "/etc/sparsegate/gateway.yaml",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert "./deploy/compose/gateway.yaml:/etc/sparsegate/gateway.yaml:ro" in gateway["volumes"]
    redis_url = urlsplit(gateway["environment"]["SPARSEGATE_REDIS_URL"])
    assert redis_url.hostname == "redis" and redis_url.port == 6379
    assert "/health/live" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]


def test_sim_workers(services: dict[str, dict[str, Any]]) -> None:
    contexts = {}
    for name in ("sim-32k", "sim-128k"):
        svc = services[name]
        assert svc["image"] == services["gateway"]["image"], "the sims run from the gateway image"
        assert svc["command"][0] == "sim"
        flags = parse_flags(svc["command"][1:])
        assert flags["--host"] == "0.0.0.0" and flags["--model"] == "glm-5.1"
        assert f":{flags['--port']}/health" in " ".join(svc["healthcheck"]["test"])
        contexts[name] = int(flags["--max-context"] or 0)
    assert contexts == {"sim-32k": 32768, "sim-128k": 131072}


def test_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        _, tag = kustomize.split_image(svc["image"])
        assert tag and tag != "latest", f"{name}: {svc['image']} is not pinned"


def test_prometheus_scrapes_gateway_and_workers(services: dict[str, dict[str, Any]]) -> None:
    mount = next(v for v in services["prometheus"]["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"sparsegate-gateway", "sglang-workers"}
    targets = {
        job: [(t, sc.get("labels", {})) for sc in jobs[job]["static_configs"] for t in sc["targets"]] for job in jobs
    }
    gateway_config = yaml.safe_load((ROOT / "deploy" / "compose" / "gateway.yaml").read_text())
    # the gateway's metrics_port: /metrics on the API port needs an admin key
    assert [t for t, _ in targets["sparsegate-gateway"]] == [f"gateway:{gateway_config['metrics_port']}"]
    assert jobs["sparsegate-gateway"].get("metrics_path", "/metrics") == "/metrics"
    pool_of = {urlsplit(w).netloc: p["name"] for p in gateway_config["pools"] for w in p["workers"]}
    assert {t: labels.get("pool") for t, labels in targets["sglang-workers"]} == pool_of


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert urlsplit(datasource["url"]).netloc == "prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "sparsegate.yml").read_text())["providers"]
    container_dir = provider["options"]["path"]
    host_dir = next(h for h, c in mounts.items() if c == container_dir)
    assert list(Path(ROOT / host_dir).glob("*.json")), "the dashboard provider's folder holds no dashboard"
