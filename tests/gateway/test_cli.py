"""`sparsegate serve` argument handling: --workers refuses what cannot be exact, and children share the port."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparsegate.gateway.cli import _child_argv, build_parser, main
from sparsegate.gateway.settings import hash_api_key


def _config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "gw.yaml"
    config = {
        "tenants": [{"name": "t", "api_keys": [hash_api_key("sk-t-0123456789abcdef")], "models": ["*"]}],
        "pools": [{"name": "p", "model": "m", "max_context": 4096, "workers": ["http://127.0.0.1:1"]}],
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_workers_above_one_refuse_the_in_memory_limiter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(_config(tmp_path)), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--workers 2 needs redis_url" in err and "in-memory limiter" in err


def test_workers_above_one_refuse_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "3"]) == 2
    assert "needs a config with redis_url" in capsys.readouterr().err


def test_workers_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(_config(tmp_path)), "--workers", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_children_run_the_same_serve_on_a_shared_port(tmp_path: Path) -> None:
    config = _config(tmp_path, redis_url="redis://127.0.0.1:6379/0")
    args = build_parser().parse_args(
        ["serve", "--config", str(config), "--port", "9001", "--workers", "2", "--loop", "asyncio"]
    )
    argv = _child_argv(args)
    assert argv[:1] == ["serve"] and "--reuse-port" in argv and "--workers" not in argv
    child = build_parser().parse_args(argv)
    assert (child.config, child.port, child.loop, child.workers, child.reuse_port) == (config, 9001, "asyncio", 1, True)


def test_loop_choices() -> None:
    assert build_parser().parse_args(["serve"]).loop == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--loop", "trio"])
