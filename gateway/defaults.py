"""The embedded default for `sparsegate serve` with no config: two simulated pools and the in-memory limiter.

It needs no Redis, no GPU and no Docker: the two pools serve the same model at different context lengths, each
backed by one simulated SGLang worker running as a child process.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from sparsegate.gateway.settings import Settings, hash_api_key, load_settings

DEMO_API_KEY = "sk-sparsegate-demo"
DEMO_MODEL = "glm-5.1"
DEMO_POOLS = (("glm-5.1-32k", 32_768), ("glm-5.1-128k", 131_072))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def demo_settings(worker_urls: dict[str, str]) -> Settings:
    return load_settings(
        overrides={
            "tenants": [
                {
                    "name": "demo",
                    "api_keys": [hash_api_key(DEMO_API_KEY)],
                    "models": ["*"],
                    "limits": {"rpm": 600, "tpm": 2_000_000, "max_concurrent": 64},
                }
            ],
            "pools": [
                {"name": name, "model": DEMO_MODEL, "max_context": ctx, "workers": [worker_urls[name]]}
                for name, ctx in DEMO_POOLS
            ],
        }
    )


@contextmanager
def demo_workers(host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """Start one simulated worker per demo pool; stop them on exit."""
    from sparsegate.backends.sim.process import spawn_sim, wait_ready

    with ExitStack() as stack:
        urls: dict[str, str] = {}
        procs: list[subprocess.Popen[bytes]] = []
        for name, ctx in DEMO_POOLS:
            port = free_port(host)
            proc = spawn_sim(port, DEMO_MODEL, ctx, [])
            procs.append(proc)
            stack.callback(_stop, proc)
            urls[name] = f"http://{host}:{port}"
        for url in urls.values():
            wait_ready(url, 30.0)
        yield urls


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
