"""`sparsegate serve --workers 2`: two processes on one port, metrics for both, SIGHUP and SIGTERM reach both."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from sparsegate.gateway.settings import hash_api_key
from tests.e2e.harness import ADMIN_KEY, KEY_ACME, MODEL, Sim, free_port, tenant, wait_http, wait_until
from tests.redis_server import RedisServer


def test_two_processes_share_the_port_metrics_and_signals(tmp_path: Path) -> None:
    with RedisServer() as redis:
        sim = Sim(model=MODEL, max_context=32_768, args=[], workdir=tmp_path).start()
        try:
            config = tmp_path / "gw.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "tenants": [tenant("acme", KEY_ACME)],
                        "pools": [{"name": "p", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
                        "redis_url": redis.url,
                        "admin": {"api_keys": [hash_api_key(ADMIN_KEY)]},
                    }
                )
            )
            port = free_port()
            log = tmp_path / "serve.log"
            argv = [sys.executable, "-m", "sparsegate.gateway.cli", "serve", "--config", str(config)]
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*argv, "--port", str(port), "--workers", "2"], stdout=out, stderr=subprocess.STDOUT
                )
            try:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/health/live", timeout=120, proc=proc, log=log)  # two interpreters start
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                prefixes = set()
                for _ in range(40):  # a new connection each: the kernel spreads them over both processes
                    resp = httpx.post(
                        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_ACME}"}
                    )
                    assert resp.status_code == 200, resp.text
                    prefixes.add(resp.headers["x-request-id"][4:16])  # each process mints with its own prefix
                assert len(prefixes) == 2, prefixes
                metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
                served = sum(
                    float(m.group(1))
                    for m in re.finditer(r'^sparsegate_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', metrics, re.M)
                )
                assert served == 40, "each process's /metrics answers for both"
                proc.send_signal(signal.SIGHUP)
                assert wait_until(lambda: log.read_text().count("config reloaded") == 2, timeout=20), log.read_text()
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0
            assert "exited with" not in log.read_text(), "no process died on the way"
        finally:
            sim.stop()
