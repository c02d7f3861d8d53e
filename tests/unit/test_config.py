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


def test_ca_file_must_be_a_readable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, f"proxmox_api:\n  ca_file: {missing}\n"))
    assert f"proxmox_api.ca_file: {missing} does not exist" in str(exc.value)
    with pytest.raises(ConfigError, match=r"proxmox_api\.ca_file: .* is not a file"):
        load_settings(write(tmp_path, f"proxmox_api:\n  ca_file: {tmp_path}\n"))
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings(write(tmp_path, f"proxmox_api:\n  ca_file: {ca}\n")).proxmox_api.ca_file == ca


def test_ca_file_from_the_environment_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEBALANCE_PROXMOX_API__CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"in the environment.*proxmox_api\.ca_file: .*missing\.pem does not exist"):
        load_settings()


def test_every_problem_is_on_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "balancing:\n  balanciness: 150\n  method: ram\n  note: 'a\nb'\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "\n" not in str(exc.value)
    assert str(exc.value).count("; ") == 2


def test_a_variable_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVEBALANCE_BALANCING__WEIGHTS", "{not json")
    with pytest.raises(ConfigError, match=r"PVEBALANCE_\* variables"):
        load_settings()


def test_a_directory_as_config_file_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_settings(tmp_path)
