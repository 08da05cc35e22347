"""Config loading: good files load, bad ones fail at start with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sparsegate.gateway.settings import ConfigError, hash_api_key, load_settings


def _config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenants": [{"name": "acme", "api_keys": [hash_api_key("k1")], "models": ["m"], "limits": {"rpm": 5}}],
        "pools": [{"name": "p", "model": "m", "max_context": 1024, "workers": ["http://127.0.0.1:1/"]}],
    }
    base.update(over)
    return base


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_loads_a_good_file(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, _config()))
    assert s.tenants[0].limits.rpm == 5
    assert s.pools[0].workers == ["http://127.0.0.1:1"]
    assert s.effective_redis_url is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tenants": [{"name": "a", "api_keys": ["plain-key"], "models": ["m"]}]}, "tenants.0.api_keys"),
        ({"pools": [{"name": "p", "model": "m", "max_context": 0, "workers": ["http://x"]}]}, "pools.0.max_context"),
        ({"pools": [{"name": "p", "model": "m", "max_context": 9, "workers": ["ftp://x"]}]}, "pools.0.workers"),
        ({"timeouts": {"connect_s": -1}}, "timeouts.connect_s"),
        ({"bogus": 1}, "bogus"),
    ],
    ids=["plain-key", "zero-context", "bad-url", "negative-timeout", "unknown-field"],
)
def test_bad_config_names_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(_write(tmp_path, _config(**change)))


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEGATE_TIMEOUTS__CONNECT_S", "0.25")
    monkeypatch.setenv("SPARSEGATE_REDIS_URL", "redis://127.0.0.1:6399/3")
    s = load_settings(_write(tmp_path, _config(timeouts={"connect_s": 5})))
    assert s.timeouts.connect_s == 0.25
    assert s.effective_redis_url == "redis://127.0.0.1:6399/3"


def test_shared_keys_and_unknown_pool_tenants_are_refused(tmp_path: Path) -> None:
    key = hash_api_key("same")
    two = [{"name": "a", "api_keys": [key], "models": ["m"]}, {"name": "b", "api_keys": [key], "models": ["m"]}]
    with pytest.raises(ConfigError, match="share an API key"):
        load_settings(_write(tmp_path, _config(tenants=two)))
    pools = [{"name": "p", "model": "m", "max_context": 9, "workers": ["http://x"], "tenants": ["ghost"]}]
    with pytest.raises(ConfigError, match="ghost"):
        load_settings(_write(tmp_path, _config(pools=pools)))


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(_write(tmp_path, [1, 2]))
