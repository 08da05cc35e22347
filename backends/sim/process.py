"""Start a simulated worker as a real process, and know when it listens: for `sparsegate serve` and e2e tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO

import httpx

StdStream = int | IO[bytes] | None


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (another process may still take it before the sim binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def spawn_sim(
    port: int,
    model: str,
    max_context: int,
    extra_args: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    stdout: StdStream = None,
    stderr: StdStream = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m sparsegate.backends.sim` with this interpreter; returns at once (see `wait_ready`).

    `extra_args` are more flags (timing, faults, `--seed`, ...). Output goes where the caller's goes
    unless `stdout`/`stderr` say otherwise; a PIPE nobody reads would stall the sim once full.
    """
    command = [
        sys.executable,
        "-m",
        "sparsegate.backends.sim",
        "--host",
        host,
        "--port",
        str(port),
        "--model",
        model,
        "--max-context",
        str(max_context),
        *extra_args,
    ]
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=None if env is None else dict(env))


def wait_ready(url: str, timeout: float = 15.0, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until the worker at `url` (e.g. `http://127.0.0.1:30000`) answers `GET /v1/models` with 200.

    Raises `TimeoutError` after `timeout` seconds, or `RuntimeError` at once if `proc` has exited.
    `/v1/models` rather than `/health`, so a sim started with `--unhealthy` still counts as up.
    """
    deadline = time.monotonic() + timeout
    probe_url = url.rstrip("/") + "/v1/models"
    with httpx.Client(timeout=1.0) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the simulated worker exited with status {proc.returncode} before it was ready")
            try:
                if client.get(probe_url).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no simulated worker answered at {probe_url} within {timeout} s")
            time.sleep(0.05)


def stop_sim(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit status.

    A sim that shut down gracefully on SIGTERM reports `-signal.SIGTERM`: uvicorn re-raises the signal
    after its shutdown so the status tells how the process ended.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
