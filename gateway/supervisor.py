"""`sparsegate serve --workers N`: N gateway processes on one port, and one small supervisor over them.

Each child binds the port itself with SO_REUSEPORT, so the kernel spreads new connections across them. The
supervisor starts them, forwards SIGHUP (reload) and SIGTERM / SIGINT (graceful stop) to every child, restarts a
child that dies, and points prometheus_client's multiprocess mode at a private temporary directory so that each
child's /metrics answers for all of them. It serves no traffic itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from prometheus_client import multiprocess

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client itself, in each child, at import
RESTART_LIMIT = 5  # restarts within RESTART_WINDOW_S before the supervisor gives up
RESTART_WINDOW_S = 60.0


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that N processes can each bind to the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, child_argv: Sequence[str], workers: int) -> None:
        self._argv = list(child_argv)
        self._workers = workers
        self._children: list[subprocess.Popen[bytes]] = []
        self._stopping = False
        self._restarts: list[float] = []
        self._metrics_dir = tempfile.mkdtemp(prefix="sparsegate-metrics-")

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, METRICS_ENV: self._metrics_dir}
        argv = [sys.executable, "-m", "sparsegate.gateway.cli", *self._argv, "--metrics-dir", self._metrics_dir]
        return subprocess.Popen(argv, env=env)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
            # A Ctrl-C in the terminal already reached every child; a second SIGINT would make uvicorn skip its
            # graceful shutdown, while SIGTERM after SIGINT does not.
            signum = signal.SIGTERM
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        try:
            self._children = [self._spawn() for _ in range(self._workers)]
            print(f"sparsegate: supervisor {os.getpid()} runs {self._workers} gateway processes", flush=True)
            return self._watch()
        finally:
            for child in self._children:
                if child.poll() is None:
                    child.terminate()
            for child in self._children:
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _watch(self) -> int:
        while True:
            for i, child in enumerate(self._children):
                code = child.poll()
                if code is None:
                    continue
                multiprocess.mark_process_dead(child.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
                if self._stopping:
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(self._restarts) > RESTART_LIMIT:
                    print(f"sparsegate: gateway processes keep exiting (last code {code}); stopping", flush=True)
                    return 1
                print(f"sparsegate: gateway process {child.pid} exited with {code}; restarting it", flush=True)
                self._children[i] = self._spawn()
            if self._stopping and all(child.poll() is not None for child in self._children):
                return 0
            time.sleep(0.2)
