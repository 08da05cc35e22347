"""The gateway configs shipped with the deployments load with the real settings schema and point at the
workers the same deployment runs (so config drift fails here, not at start-up in a cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sparsegate.gateway.settings import Settings, hash_api_key, load_settings
from tests.deploy.k8s import find, one, parse_flags
from tests.deploy.schemas import ROOT

Docs = list[dict[str, Any]]
DEMO_HASH = hash_api_key("sk-sparsegate-demo")
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "gateway.yaml"


def configmap_settings(docs: Docs, tmp_path: Path) -> Settings:
    deployment = one(docs, "Deployment", "sparsegate-gateway")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    data = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    path = tmp_path / "gateway.yaml"
    path.write_text(data["gateway.yaml"])
    return load_settings(path)


@pytest.mark.usefixtures("clean_env")
def test_compose_config_loads() -> None:
    settings = load_settings(COMPOSE_CONFIG)
    assert [t.name for t in settings.tenants] == ["demo"]
    assert settings.tenants[0].api_keys[0].get_secret_value() == DEMO_HASH
    assert settings.effective_redis_url is None, "the Redis URL comes from the environment, not the file"


@pytest.mark.usefixtures("clean_env")
def test_compose_config_matches_the_compose_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    settings = load_settings(COMPOSE_CONFIG)
    for pool in settings.pools:
        for url in pool.workers:
            parts = urlsplit(url)
            service = compose["services"][parts.hostname]
            flags = parse_flags(service["command"][1:])
            assert service["command"][0] == "sim"
            assert flags["--port"] == str(parts.port)
            assert flags["--model"] == pool.model
            assert int(flags["--max-context"] or 0) == pool.max_context


@pytest.mark.usefixtures("clean_env")
def test_dev_configmap_loads_and_matches_the_sim_workers(dev: Docs, tmp_path: Path) -> None:
    settings = configmap_settings(dev, tmp_path)
    for pool in settings.pools:
        for url in pool.workers:
            parts = urlsplit(url)
            service = one(dev, "Service", str(parts.hostname))
            assert [p["port"] for p in service["spec"]["ports"]] == [parts.port]
            sim = one(dev, "Deployment", str(parts.hostname))
            (container,) = sim["spec"]["template"]["spec"]["containers"]
            flags = parse_flags(container["args"][1:])
            assert flags["--model"] == pool.model
            assert int(flags["--max-context"] or 0) == pool.max_context


@pytest.mark.usefixtures("clean_env")
def test_prod_configmap_loads_and_matches_the_worker_groups(prod: Docs, tmp_path: Path) -> None:
    settings = configmap_settings(prod, tmp_path)
    served: set[str] = set()
    for pool in settings.pools:
        for url in pool.workers:
            parts = urlsplit(url)
            # <lws>-<group>.<lws>: the leader of group <group> behind the LWS's headless service.
            host, _, subdomain = str(parts.hostname).partition(".")
            lws = one(prod, "LeaderWorkerSet", subdomain)
            name, _, group = host.rpartition("-")
            assert name == subdomain and int(group) < lws["spec"].get("replicas", 1), f"{url}: no such group"
            (leader,) = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
            flags = parse_flags(leader["args"])
            assert flags["--port"] == str(parts.port)
            assert flags["--served-model-name"] == pool.model
            assert int(flags["--context-length"] or 0) >= pool.max_context, f"{pool.name}: workers' context too short"
            assert lws["metadata"]["labels"]["sparsegate.io/pool"] == pool.name
            served.add(f"{subdomain}-{group}")
        # Every group of the pool's LWS is listed, or it would burn GPUs unused.
        lws_names = {str(urlsplit(u).hostname).partition(".")[2] for u in pool.workers}
        for name in lws_names:
            replicas = one(prod, "LeaderWorkerSet", name)["spec"].get("replicas", 1)
            assert {f"{name}-{i}" for i in range(replicas)} <= served
    assert {lws["metadata"]["name"] for lws in find(prod, "LeaderWorkerSet")} == {
        str(urlsplit(u).hostname).partition(".")[2] for p in settings.pools for u in p.workers
    }


@pytest.mark.usefixtures("clean_env")
def test_prod_config_lets_nobody_in_by_default(prod: Docs, tmp_path: Path) -> None:
    settings = configmap_settings(prod, tmp_path)
    hashes = {k.get_secret_value() for t in settings.tenants for k in t.api_keys}
    assert DEMO_HASH not in hashes, "the prod config must not accept the public demo key"
    assert settings.effective_redis_url is None, "the Redis URL belongs in the sparsegate-redis Secret"
