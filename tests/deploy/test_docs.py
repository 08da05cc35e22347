"""docs/deploy.md names real files and the real apply command."""

from __future__ import annotations

import re

from tests.deploy.schemas import ROOT

DOC = ROOT / "docs" / "deploy.md"


def test_paths_named_in_the_deploy_guide_exist() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"(?<![\w/])((?:deploy|tests)/[\w./-]*[\w/])", text))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/deploy.md names paths that do not exist: {missing}"


def test_the_guide_shows_the_prod_apply() -> None:
    assert "kubectl apply -k deploy/k8s/overlays/prod" in DOC.read_text()
