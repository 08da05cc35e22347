"""A real, throwaway `redis-server` for tests: its own free port, its own temp dir, no persistence.

    with RedisServer() as redis:
        url = redis.url          # redis://127.0.0.1:<port>/0
        redis.stop()             # Redis dies: connections are refused
        redis.start()            # and comes back on the same port, empty (nothing is persisted)
        redis.pause()            # Redis hangs (SIGSTOP): connections open but nothing answers
        redis.resume()           # and answers again, with its data

Never the shared server on 6379. If `redis-server` is missing, the test fails with a message saying how to get it:
the limiter's tests are the proof that limits hold across replicas, and they must not silently skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout_s: float = 0.2) -> bool:
    """True when a Redis answers PING on this port (raw RESP, so the helper needs no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process. `start()`/`stop()` may be called repeatedly; the port stays the same."""

    def __init__(self, port: int | None = None, *, binary: str = "redis-server") -> None:
        path = shutil.which(binary)
        if path is None:
            pytest.fail(
                f"{binary!r} is not on PATH. These tests need a real Redis server: install it "
                "(Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`) and run them again.",
                pytrace=False,
            )
        self.binary = path
        self.port = port if port is not None else free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="sparsegate-redis-"))
        self._log = self._dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self._dir), "--logfile", str(self._log), "--daemonize", "no"]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not start:\n{self._log_tail()}", pytrace=False)
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the server (connections are refused afterwards); what it held is gone."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._paused:
            os.kill(proc.pid, signal.SIGCONT)
            self._paused = False
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the server: the kernel still accepts connections, but no command is ever answered."""
        if self._proc is not None and not self._paused:
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            os.kill(self._proc.pid, signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
