"""The wheel holds only `sparsegate/...`, and the hand-kept package list matches the folders on disk."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"gateway": "sparsegate.gateway", "backends": "sparsegate.backends", "kernels": "sparsegate.kernels"}


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, dotted in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([dotted, *rel.parts]))
    return found


def test_package_list_matches_folders() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()
    assert config["tool"]["setuptools"]["package-dir"] == {v: k for k, v in MAPPED.items()}


def test_wheel_contains_only_the_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("sparsegate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("sparsegate/") for n in code)
    assert "sparsegate/gateway/py.typed" in names
    assert not any(n.startswith("sparsegate/__init__") for n in names), "sparsegate stays a namespace package"
    for package in _packages_on_disk():
        assert package.replace(".", "/") + "/__init__.py" in names
