"""Real processes on real sockets: simulated SGLang workers and gateways, for end-to-end tests.

Every process gets a free port on 127.0.0.1 and is stopped when its fixture ends. Nothing here patches the code
under test; tests steer the sims through their own `/sim/*` endpoints.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from sparsegate.gateway.settings import hash_api_key

MODEL = "glm-5.1"
KEY_ACME = "sk-acme-0123456789abcdef"
KEY_BETA = "sk-beta-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(
    url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = log.read_text(errors="replace") if log is not None and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}:\n{out[-4000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # Output goes to a file, never a pipe nobody reads: a full pipe would block the process mid-test.
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


@dataclass
class Sim:
    """One simulated worker process."""

    model: str
    max_context: int
    args: list[str]
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"sim-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Sim:
        cmd = [
            sys.executable, "-m", "sparsegate.backends.sim",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--model", self.model, "--max-context", str(self.max_context), *self.args,
        ]  # fmt: skip
        self.proc = _spawn(cmd, self.log)
        try:
            wait_http(self.url + "/health", proc=self.proc, log=self.log)
        except BaseException:
            self.stop()  # a process that never got ready is not left running after the test
            raise
        return self

    def kill(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/sim/stats", timeout=5).json()
        return data

    def reset(self) -> None:
        httpx.post(self.url + "/sim/reset", timeout=5).raise_for_status()

    def faults(self, **faults: Any) -> None:
        httpx.post(self.url + "/sim/faults", json=faults, timeout=5).raise_for_status()


def tenant(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "api_keys": [hash_api_key(key)], "models": ["*"], **extra}


@dataclass
class Gateway:
    """One gateway process (`sparsegate serve --config`) on its own port."""

    config: dict[str, Any]
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"gateway-{self.port}.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / f"gateway-{self.port}.yaml"

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self) -> Gateway:
        self.write_config()
        cmd = [sys.executable, "-m", "sparsegate.gateway.cli", "serve", "--config", str(self.config_path),
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = _spawn(cmd, self.log, env)
        try:
            wait_http(self.url + "/health/live", proc=self.proc, log=self.log)
        except BaseException:
            self.stop()  # a process that never got ready is not left running after the test
            raise
        return self

    def reload(self, config: dict[str, Any]) -> None:
        self.write_config(config)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no settling, no flushing; what was not on disk or in Redis is gone."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> str:
        """Stop the gateway and return everything it printed (its request log included)."""
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        return self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stream_then_leave(
    gw: Gateway | ThreadedGateway, body: dict[str, Any], key: str = KEY_ACME, events: int = 3
) -> None:
    """Start a streamed chat completion, read `events` lines of it, then drop the connection mid-stream."""
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        lines = resp.iter_lines()
        for _ in range(events):
            next(lines)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class ThreadedGateway:
    """The gateway app under uvicorn on a real socket, in a thread of the test process.

    For tests that need to look inside (an in-memory span exporter); everything else uses `Gateway` processes.
    """

    def __init__(self, app: Any) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        wait_http(self.url + "/health/live")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
