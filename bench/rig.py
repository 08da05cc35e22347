"""The test rig shared by bench/peers.py and bench/overload.py: C helpers, pinned processes, CPU time from /proc,
the load average and the upstream's control endpoints (the load generators are in clients.py).

Everything here runs on loopback only. The C helpers are compiled at run time into the cache dir (never committed).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
KEY = "sk-bench-0123456789abcdef"
MODEL = "bench-model"
TARGET_CPUS = "1"  # the target under test
RIG_CPUS = "0"  # upstream and load generators
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def build_helpers(cache_dir: Path) -> dict[str, Path]:
    """Compile every bench/c/*.c into cache_dir/bin, named by a hash of its source so an edit rebuilds it."""
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is not on PATH; install it (apt-get install -y gcc)")
    out = cache_dir / "bin"
    out.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for src in sorted((BENCH_DIR / "c").glob("*.c")):
        digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
        binary = out / f"{src.stem}-{digest}"
        if not binary.exists():
            tmp = binary.with_suffix(".tmp")
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True)
            tmp.rename(binary)
        built[src.stem] = binary
    return built


def need_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not on PATH; install it (apt-get install -y wrk)")
    return path


# -- processes -------------------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv]


@contextmanager
def process(name: str, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> Iterator[Proc]:
    """Run argv in its own session (so its children can be stopped with it); stop it on exit."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    proc = Proc(name, popen, log)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: Proc, grace_s: float = 10.0) -> None:
    if proc.popen.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=5)


def log_tail(proc: Proc, lines: int = 20) -> str:
    try:
        return "\n".join(proc.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_http(url: str, proc: Proc, timeout_s: float, ok: Sequence[int] = (200,)) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{log_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status in ok:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout_s:.0f} s:\n{log_tail(proc)}")


# -- CPU time and the machine ------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime + cutime + cstime in seconds) of one process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime (fields 14-17 of the man page)
    return int(fields[1]), ticks / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """CPU seconds of `root` and all its live descendants, plus what their reaped children used."""
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents.setdefault(st[0], []).append(int(entry))
                cpu[int(entry)] = st[1]
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(parents.get(pid, []))
    return total


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_quiet(threshold: float | None, max_wait_s: float = 900) -> dict[str, Any]:
    """Wait until the 1-min load average is below `threshold` (the machine is shared); say how it went."""
    start = time.monotonic()
    if threshold is not None:
        while os.getloadavg()[0] >= threshold and time.monotonic() - start < max_wait_s:
            print(f"  waiting for a quiet machine: load average {loadavg()} (want 1-min < {threshold})", flush=True)
            time.sleep(10)
    return {"threshold": threshold, "waited_s": round(time.monotonic() - start, 1), "loadavg": loadavg()}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


# -- the upstream (bench/c/upstream.c) ------------------------------------------------------------------------------


class Upstream:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read() or b"{}")
            return data

    def pace(self, interval_ms: float) -> None:
        self._call("POST", f"/bench/config?interval_ms={interval_ms}")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/bench/stats")

    def reset(self) -> None:
        self._call("POST", "/bench/reset")


@contextmanager
def upstream(binaries: dict[str, Path], workdir: Path, cpus: str = RIG_CPUS) -> Iterator[Upstream]:
    port = free_port()
    with process("upstream", pinned(cpus, [str(binaries["upstream"]), str(port)]), workdir) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 10)
        yield Upstream(proc, port)


def shown_python() -> str:
    """The interpreter as the command line that ran a script would name it (`.venv/bin/python` in the repo)."""
    exe = Path(sys.executable)
    try:
        return str(exe.absolute().relative_to(Path.cwd()))
    except ValueError:
        return exe.name
