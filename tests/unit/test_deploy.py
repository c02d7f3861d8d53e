"""The deployment files stay in step with the code (no container engine or helm binary here)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pvebalance.shared.config import Settings
from tests.helpers import REPO


def subcommands() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pvebalance", "--help"], capture_output=True, text=True, check=True)
    return {word for word in ("collector", "planner", "migrator", "simulator", "plan", "demo") if word in out.stdout}


def test_compose_services_run_real_subcommands_after_a_healthy_redis() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    known = subcommands()
    for name in ("collector", "planner", "migrator"):
        assert services[name]["command"][0] in known
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        # the token's secret is passed through from the environment, never written here
        assert services[name]["environment"]["PVEBALANCE_PROXMOX_API__TOKEN_SECRET"] is None
    assert "healthcheck" in services["redis"]


def test_helm_values_config_is_a_valid_settings_file() -> None:
    values = yaml.safe_load((REPO / "helm/pvebalance/values.yaml").read_text())
    config = values["config"]
    config["proxmox_api"]["token_secret"] = "injected-from-the-secret"
    Settings.model_validate(config)
    deployments = (REPO / "helm/pvebalance/templates/deployments.yaml").read_text()
    for component in ("collector", "planner", "migrator"):
        assert component in deployments and component in subcommands()
    assert "PVEBALANCE_PROXMOX_API__TOKEN_SECRET" in deployments


def test_every_source_package_is_installed() -> None:
    """A package missing from pyproject.toml works in the editable install and breaks every image."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {f"pvebalance.{d}" if d != "pvebalance" else d: d for d in ("pvebalance", "shared", "engine", "services",
                                                                        "simulator", "scenarios")}
    found = set()
    for name, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    assert found <= set(project["packages"]), f"not in pyproject.toml: {sorted(found - set(project['packages']))}"


@pytest.mark.parametrize(("missing", "args"), [("cryptography", ["simulator", "--port", "0"]),
                                               ("fakeredis", ["demo", "--timeout", "1"])])
def test_demo_commands_without_the_demo_extra_say_what_to_install(missing: str, args: list[str]) -> None:
    code = (f"import sys; sys.modules[{missing!r}] = None; sys.argv = ['pvebalance', *{args!r}]; "
            "from pvebalance.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: this command needs pvebalance[demo] ({missing} is not installed): "
                                  "pip install 'pvebalance[demo]'")


def test_the_production_install_needs_no_demo_dependency() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    production = " ".join(project["dependencies"])
    for name in ("fakeredis", "cryptography"):
        assert name not in production and any(name in d for d in project["optional-dependencies"]["demo"])


def test_the_compose_config_loads_and_points_at_the_demo_simulator() -> None:
    from pvebalance.shared.config import load_settings

    settings = load_settings(REPO / "config" / "pvebalance.yaml")
    assert settings.proxmox_api.hosts == ["simulator:8006"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["simulator"]["profiles"] == ["demo"]
    assert "--port" in compose["services"]["simulator"]["command"]
    builds = [name for name, service in compose["services"].items() if "build" in service]
    assert builds == ["collector"]  # the image is built once; every other service names it
