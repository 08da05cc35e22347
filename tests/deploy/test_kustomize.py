"""The test renderer agrees with the real kustomize (`kubectl kustomize`) wherever kubectl is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.conftest import K8S, kustomization_dirs

Docs = list[dict[str, Any]]
KUBECTL = shutil.which("kubectl")
GENERATED = {"ConfigMap", "Secret"}
_HASH = re.compile(r"-[a-z0-9]{10}$")


def normalise(docs: Docs) -> dict[tuple[str, str, str | None], str]:
    """Key -> canonical YAML, with kustomize's content-hash suffixes on generated names removed everywhere."""
    generated = {d["metadata"]["name"] for d in docs if d["kind"] in GENERATED}
    out = {}
    for doc in docs:
        text = yaml.safe_dump(doc, sort_keys=True)
        for name in generated:
            text = text.replace(name, _HASH.sub("", name))
        key = (doc["kind"], _HASH.sub("", doc["metadata"]["name"]), doc["metadata"].get("namespace"))
        out[key] = text
    return out


def test_split_image() -> None:
    assert kustomize.split_image("registry:5000/a/b:1.2") == ("registry:5000/a/b", "1.2")
    assert kustomize.split_image("registry:5000/a/b") == ("registry:5000/a/b", None)
    assert kustomize.split_image("redis@sha256:abc") == ("redis", "@sha256:abc")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; the renderer is then the only check")
@pytest.mark.parametrize("directory", [str(d.relative_to(K8S)) for d in kustomization_dirs()])
def test_renderer_matches_kubectl_kustomize(rendered: dict[str, Docs], directory: str) -> None:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    real = [d for d in yaml.safe_load_all(result.stdout) if d]
    ours, theirs = normalise(rendered[directory]), normalise(real)
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key] == theirs[key], f"{key} renders differently"
