"""Shared fixtures: the repository's deploy tree, rendered once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import kustomize
from tests.deploy.schemas import ROOT

K8S = ROOT / "deploy" / "k8s"


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization under deploy/k8s, rendered: keyed by its path relative to deploy/k8s."""
    return {str(d.relative_to(K8S)): kustomize.render(d) for d in kustomization_dirs()}


@pytest.fixture(scope="session")
def prod(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["overlays/prod"]


@pytest.fixture(scope="session")
def dev(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["overlays/dev"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings lets SPARSEGATE_* variables override the file: keep the caller's out of the test."""
    for name in list(os.environ):
        if name.startswith("SPARSEGATE_"):
            monkeypatch.delenv(name)
