"""What bench/peers.py and bench/overload.py put in front of the upstream: sparsegate (whatever `sparsegate serve` is
on this checkout), SGLang's Rust router and the LiteLLM proxy, each peer installed into its own venv under the
cache dir and reused while the pinned version is there. Every target runs pinned to TARGET_CPUS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from clients import chat_body
from rig import (
    KEY,
    MODEL,
    RIG_CPUS,
    TARGET_CPUS,
    Proc,
    Upstream,
    free_port,
    log_tail,
    pinned,
    process,
    tree_cpu_s,
    wait_http,
)

# name -> (pip requirement, distribution, version)
PEERS: dict[str, tuple[str, str, str]] = {
    "sglang-router": ("sglang-router==0.3.2", "sglang-router", "0.3.2"),
    "litellm": ("litellm[proxy]==1.106.2", "litellm", "1.106.2"),
    "plot": ("matplotlib>=3.8", "matplotlib", ""),
}


@dataclass
class Target:
    name: str
    port: int
    proc: Proc | None  # None: the direct path, nothing in between

    def cpu_s(self) -> float | None:
        return None if self.proc is None else tree_cpu_s(self.proc.pid)


def _installed(python: Path, dist: str) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(cache_dir: Path, name: str) -> Path:
    """The venv of one peer (or the plotting tools), created and installed on first use; returns its bin dir."""
    requirement, dist, version = PEERS[name]
    venv = cache_dir / "venvs" / name
    python = venv / "bin" / "python"
    have = _installed(python, dist) if python.exists() else None
    if have is not None and (not version or have == version):
        return venv / "bin"
    print(f"  installing {requirement} into {venv} (once; reused afterwards)", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    return venv / "bin"


def _post_ok(port: int, path: str = "/v1/chat/completions") -> bool:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(chat_body(2, False)).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_serving(target: Target, timeout_s: float) -> None:
    """Until a real completion goes through (a router may answer /health before its worker is registered)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _post_ok(target.port):
            return
        if target.proc is not None and target.proc.popen.poll() is not None:
            break
        time.sleep(0.3)
    tail = log_tail(target.proc) if target.proc else ""
    raise RuntimeError(f"{target.name} does not serve completions after {timeout_s:.0f} s:\n{tail}")


@contextmanager
def direct(up: Upstream) -> Iterator[Target]:
    yield Target("direct", up.port, None)


@contextmanager
def sglang_router(cache_dir: Path, up: Upstream, workdir: Path) -> Iterator[Target]:
    bin_dir = ensure_venv(cache_dir, "sglang-router")
    port = free_port()
    argv = [
        str(bin_dir / "python"),
        "-m",
        "sglang_router.launch_router",
        "--worker-urls",
        up.url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--policy",
        "round_robin",
        # its Prometheus exporter takes a fixed port by default; two routers (or a stale one) would clash
        "--prometheus-port",
        str(free_port()),
        "--log-level",
        "warn",
    ]
    with process("sglang-router", pinned(TARGET_CPUS, argv), workdir) as proc:
        target = Target("sglang-router", port, proc)
        wait_serving(target, 60)
        yield target


@contextmanager
def litellm(cache_dir: Path, up: Upstream, workdir: Path) -> Iterator[Target]:
    bin_dir = ensure_venv(cache_dir, "litellm")
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{up.url}/v1", "api_key": "sk-upstream"},
            }
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False},
        "general_settings": {"master_key": KEY},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [
        str(bin_dir / "litellm"),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    # Offline: the cost map ships in the package; no telemetry, no logs per request.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    with process("litellm", pinned(TARGET_CPUS, argv), workdir, env) as proc:
        target = Target("litellm", port, proc)
        wait_serving(target, 180)
        yield target


def serve_supports_workers() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "sparsegate.gateway.cli", "serve", "--help"], capture_output=True, text=True
    )
    return "--workers" in done.stdout


# /metrics on the API port needs an admin key (issue 12); the bench scrapes with this one.
ADMIN_KEY = "sk-bench-admin-0123456789abcdef"


def gateway_config(worker_url: str, redis_url: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # Limits far above what the bench sends: admission runs (as in production) but never refuses.
    limits = {"rpm": 10**9, "tpm": 10**12, "max_concurrent": 10**6}
    config: dict[str, Any] = {
        "tenants": [{"name": "bench", "api_keys": [hash_key(KEY)], "models": ["*"], "limits": limits}],
        "admin": {"api_keys": [hash_key(ADMIN_KEY)]},
        "pools": [
            {"name": "p", "model": MODEL, "max_context": 32768, "workers": [worker_url], "policy": "power_of_two"}
        ],
    }
    if redis_url:
        config["redis_url"] = redis_url
    config.update(extra or {})
    return config


def hash_key(key: str) -> str:
    from sparsegate.gateway.settings import hash_api_key

    return hash_api_key(key)


@contextmanager
def sparsegate(
    up: Upstream,
    workdir: Path,
    *,
    workers: int = 1,
    redis_url: str | None = None,
    cpus: str = TARGET_CPUS,
    log_level: str = "warning",
    extra: dict[str, Any] | None = None,
    name: str = "sparsegate",
) -> Iterator[Target]:
    port = free_port()
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(gateway_config(up.url, redis_url, extra)))
    argv = [
        sys.executable,
        "-m",
        "sparsegate.gateway.cli",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if workers != 1:
        argv += ["--workers", str(workers)]
    with process(name, pinned(cpus, argv), workdir) as proc:
        wait_http(f"http://127.0.0.1:{port}/health/ready", proc, 60)
        target = Target(name, port, proc)
        wait_serving(target, 30)
        yield target


@contextmanager
def redis(workdir: Path, cpus: str = RIG_CPUS) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH; install it (apt-get install -y redis-server)")
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    with process("redis", pinned(cpus, argv), workdir) as proc:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                break
            if proc.popen.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{log_tail(proc)}")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
