from pathlib import Path

import pytest

from pvebalance.shared.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_keys_follow_proxlb_names(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
proxmox_api:
  hosts: ['10.0.0.1', '10.0.0.2:8443']
  user: root@pam
  pass: s3cret
  ssl_verification: false
balancing:
  method: cpu
  mode: assigned
  balanciness: 7
""")
    s = load_settings(cfg)
    assert s.proxmox_api.hosts == ["10.0.0.1", "10.0.0.2:8443"]
    assert s.proxmox_api.password is not None and s.proxmox_api.password.get_secret_value() == "s3cret"
    assert s.proxmox_api.ssl_verification is False
    assert (s.balancing.method, s.balancing.mode, s.balancing.balanciness) == ("cpu", "assigned", 7)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, "balancing:\n  balanciness: 7\n")
    monkeypatch.setenv("PVEBALANCE_BALANCING__BALANCINESS", "3")
    assert load_settings(cfg).balancing.balanciness == 3


def test_redis_url_from_redis_url_variable_and_prefixed_one_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:1/2")
    assert load_settings().redis.url == "redis://example:1/2"
    monkeypatch.setenv("PVEBALANCE_REDIS__URL", "redis://other:3/4")
    assert load_settings().redis.url == "redis://other:3/4"


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, "balancing:\n  balanciness: 150\n  method: ram\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    text = str(exc.value)
    assert "balancing.balanciness" in text and "balancing.method" in text
    assert "150" in text


def test_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"balancing\.balancyness: unknown key"):
        load_settings(write(tmp_path, "balancing:\n  balancyness: 5\n"))


def test_secret_never_in_the_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, "proxmox_api:\n  token_id: 'root@pam!x'\n  token_secret: topsecret\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "topsecret" not in str(exc.value)
    assert "token_id" in str(exc.value)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(write(tmp_path, "balancing: [unclosed\n"))
