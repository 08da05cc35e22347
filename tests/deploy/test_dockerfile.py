"""Dockerfile and .dockerignore, checked by reading them (no Docker engine here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy import kustomize
from tests.deploy.schemas import ROOT

Instruction = tuple[str, str]


def instructions(path: Path) -> list[Instruction]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    return out


def resolve_from(args: str, build_args: dict[str, str]) -> str:
    image = args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], image)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/worker/Dockerfile"])
def test_base_images_are_pinned(dockerfile: str) -> None:
    steps = instructions(ROOT / dockerfile)
    build_args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    stages: set[str] = set()
    for word, args in steps:
        if word != "FROM":
            continue
        image = resolve_from(args, build_args)
        if image not in stages:
            _, tag = kustomize.split_image(image)
            assert tag and tag != "latest", f"{dockerfile}: FROM {image} is not pinned"
        parts = args.split()
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])


def test_gateway_image() -> None:
    steps = instructions(ROOT / "Dockerfile")
    froms = [a for w, a in steps if w == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the runtime image"
    build_args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert resolve_from(froms[-1], build_args).startswith("python:3.11-slim")
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    words = [w for w, _ in final]

    users = [a for w, a in final if w == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in {"root", "0"} and uid.isdigit(), "a numeric non-root uid lets runAsNonRoot verify it"
    assert words.index("USER") < words.index("ENTRYPOINT")

    assert json.loads(dict(final)["ENTRYPOINT"]) == ["sparsegate"]
    assert json.loads(dict(final)["CMD"]) == [
        "serve", "--config", "/etc/sparsegate/gateway.yaml", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    healthcheck = dict(final)["HEALTHCHECK"]
    assert "/health/live" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    assert any(w == "COPY" and a.startswith("--from=") for w, a in final), "the runtime stage copies the built venv"
    assert "8000" in dict(final)["EXPOSE"]

    installs = " ".join(a for w, a in steps if w == "RUN" and "pip install" in a)
    assert "sparsegate-*.whl" in installs, "the package is installed as a wheel"
    assert not re.search(r"sparsegate[^ ]*\[", installs), "the gateway image installs no extras"


def test_dockerignore_admits_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything is ignored unless named"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "gateway", "backends", "kernels"}
    assert {"**/__pycache__", "**/*.pyc"} <= set(lines)
