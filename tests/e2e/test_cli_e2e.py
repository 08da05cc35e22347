"""The `sparsegate` command as a user runs it: the embedded demo, config errors, key hashing, the sim."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import yaml

from sparsegate.gateway.defaults import DEMO_API_KEY, DEMO_MODEL
from sparsegate.gateway.settings import hash_api_key
from tests.e2e.harness import free_port, wait_http, wait_until

CLI = [sys.executable, "-m", "sparsegate.gateway.cli"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_serve_without_config_runs_the_embedded_demo(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", proc=proc, log=log)
        banner = log.read_text()
        assert DEMO_API_KEY in banner and f"http://127.0.0.1:{port}" in banner and "curl" in banner
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEMO_API_KEY, max_retries=0) as client:
            models = client.models.list()
            assert [(m.id, (m.model_extra or {})["max_model_len"]) for m in models.data] == [(DEMO_MODEL, 131_072)]
            reply = client.chat.completions.create(
                model=DEMO_MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
            )
            assert reply.choices[0].message.content
        sims = _children(proc.pid)
        assert len(sims) == 2, "one simulated worker per demo pool"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert wait_until(lambda: not any(_alive(pid) for pid in sims), timeout=10), "the sims stop with the gateway"


def test_bad_config_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tenants": [{"name": "a", "api_keys": [hash_api_key("k")], "models": ["*"], "limits": {"rpm": 0}}],
                "pools": [{"name": "p", "model": "m", "max_context": 10, "workers": ["http://127.0.0.1:1"]}],
            }
        )
    )
    result = subprocess.run([*CLI, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "tenants.0.limits.rpm" in result.stderr


def test_hash_key_reads_stdin_and_sim_has_help() -> None:
    result = subprocess.run([*CLI, "hash-key"], input="sk-abc\n", capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == hash_api_key("sk-abc")
    result = subprocess.run([*CLI, "sim", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--max-context" in result.stdout


def test_web_concurrency_in_the_environment_does_not_stop_serve(tmp_path: Path) -> None:
    """uvicorn reads WEB_CONCURRENCY and, handed an app object, would exit with code 3; serve must not."""
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tenants": [{"name": "t", "api_keys": [hash_api_key("sk-t-0123456789abcdef")], "models": ["*"]}],
                "pools": [{"name": "p", "model": "m", "max_context": 4096, "workers": ["http://127.0.0.1:1"]}],
            }
        )
    )
    log = tmp_path / "serve.log"
    env = {**os.environ, "WEB_CONCURRENCY": "2"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", proc=proc, log=log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
