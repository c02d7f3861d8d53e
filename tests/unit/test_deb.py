"""The Debian package as deploy/deb/build.sh makes it (deploy/check.sh installs it into a fresh Debian
container and runs it; this checks what it holds, on the machine that builds it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run([str(REPO / "deploy" / "deb" / "build.sh"), str(out)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.strip())


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_the_package_is_named_as_debian_names_an_all_package(deb: Path) -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert deb.name == f"pvebalance_{version}_all.deb"
    fields = dict(line.split(": ", 1) for line in dpkg_deb("-f", str(deb)).splitlines() if ": " in line)
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == ("pvebalance", version, "all")
    assert "python3-venv" in fields["Depends"] and fields["Recommends"] == "redis-server"


def test_it_holds_the_units_the_config_as_a_conffile_the_wheel_and_its_pins(deb: Path, tmp_path: Path) -> None:
    listing = dpkg_deb("-c", str(deb))
    units = sorted(p.name for p in (REPO / "deploy" / "systemd").iterdir() if p.suffix in (".service", ".target"))
    for unit in units:
        assert f"./lib/systemd/system/{unit}" in listing, unit
    assert "./usr/bin/pvebalance -> /opt/pvebalance/bin/pvebalance" in listing
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tmp_path)], check=True)
    assert (tmp_path / "DEBIAN" / "conffiles").read_text().split() == ["/etc/pvebalance/pvebalance.yaml"]
    for script in ("postinst", "prerm", "postrm"):
        assert (tmp_path / "DEBIAN" / script).stat().st_mode & 0o111, script
    pins = (tmp_path / "usr/share/pvebalance/constraints.txt").read_text().split()
    names = {pin.split("==")[0] for pin in pins}
    assert {"pydantic", "redis", "rq", "fastapi", "uvicorn", "highspy", "proxmoxer"} <= names
    assert all("==" in pin for pin in pins) and "fakeredis" not in names, "runtime only, each pinned"
    assert list((tmp_path / "usr/share/pvebalance").glob("pvebalance-*-py3-none-any.whl"))


def test_the_packaged_config_passes_config_check(deb: Path, tmp_path: Path) -> None:
    import sys

    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    config = tmp_path / "etc/pvebalance/pvebalance.yaml"
    out = subprocess.run([sys.executable, "-m", "pvebalance", "config", "check", "-c", str(config)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{config}: ok\n")
