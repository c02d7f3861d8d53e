"""Commands about the config file: `config check` and `import-proxlb-config`.

Registered on the main app when imported (pvebalance/cli/__init__.py). Each command handles the
errors an operator can cause itself: one line on stderr per problem, exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console

from pvebalance.shared.config import ENV_PREFIX, BalancingSettings, ConfigError, Settings, load_settings

from .base import app, config_file
from .proxlb_import import ProxlbConfigError, ProxlbImport, read_proxlb, to_yaml, validate

config_app = typer.Typer(no_args_is_help=True, help="Check a pvebalance config file.")
err = Console(stderr=True, soft_wrap=True)  # soft_wrap: one message stays one line, at any width


def say(text: str) -> None:
    err.print(text, markup=False, highlight=False)


def fail(text: str) -> NoReturn:
    say(f"error: {text}")
    raise typer.Exit(2)


@config_app.command("check")
def check(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML config file to check (default: $PVEBALANCE_CONFIG, else "
        "/etc/pvebalance/pvebalance.yaml)")] = None,
    live: Annotated[bool, typer.Option("--live", help="also log in to Proxmox with it, name each privilege the "
                                       "services need and the credentials lack, and ask Redis")] = False,
) -> None:
    """Validate a config file (with the PVEBALANCE_* variables set now); name every wrong key. With
    --live, also try it on the cluster and on Redis."""
    config = config_file(config)
    if config is None and not live:
        fail("no config file to check: give -c FILE (or set PVEBALANCE_CONFIG)")
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        if exc.problems == [str(exc)]:  # not one key's problem: the file is missing, or not YAML
            fail(str(exc))
        for problem in exc.problems:
            say(f"error: {config}: {problem}")
        if overriding_variables():
            say(f"note: {', '.join(overriding_variables())} set: they override the file")
        raise typer.Exit(2) from None
    lines = summary(settings)
    if overriding_variables():
        lines.append(f"overridden by {', '.join(overriding_variables())}")
    sys.stdout.write(f"{config or 'the defaults'}: ok\n" + "".join(f"  {line}\n" for line in lines))
    if live:
        from .live import check_live

        fine, problems = check_live(settings)
        sys.stdout.write("".join(f"  {line}\n" for line in fine))
        for problem in problems:
            say(f"error: {problem}")
        if problems:
            raise typer.Exit(2)


def overriding_variables() -> list[str]:
    """The environment variables load_settings reads besides the file (names only: values may be secrets):
    PVEBALANCE_SECTION[__KEY] for a section of the settings, and REDIS_URL; not PVEBALANCE_CONFIG or
    the tests' PVEBALANCE_TEST_REDIS_URL, which name no setting."""
    sections = {name.upper() for name in Settings.model_fields}
    return sorted(n for n in os.environ if n == "REDIS_URL" or (
        n.startswith(ENV_PREFIX) and n[len(ENV_PREFIX):].split("__")[0].upper() in sections))


def _balanced(bal: BalancingSettings) -> str:
    """The dimensions balanced, each with its band, as the engine reads them (engine/policy.py):
    "memory,cpu (used), balanciness memory 5 pp, cpu 10 pp"; one band for all is said once."""
    from pvebalance.engine.policy import Policy  # the one reading of method, weights and bands

    policy = Policy.from_settings(bal)
    bands = {dim: policy.band(dim) for dim in policy.dimensions}
    said = (f"{next(iter(bands.values())):g} pp" if len(set(bands.values())) == 1
            else ", ".join(f"{dim} {band:g} pp" for dim, band in bands.items()))
    return f"{','.join(policy.dimensions)} ({bal.mode}), balanciness {said}"


def summary(settings: Settings) -> list[str]:
    """A few lines an operator can check at a glance; never a secret (nor the Redis password)."""
    api, bal, cluster = settings.proxmox_api, settings.balancing, settings.proxmox_cluster
    auth = (f"token {api.token_id}" if api.token_id else "password" if api.password
            else "NO credentials: set token_id and token_secret, or pass")
    redis = urlsplit(settings.redis.url)
    where = redis.netloc.rpartition("@")[2] + redis.path  # user and password dropped
    lines = [
        f"proxmox_api: {', '.join(api.hosts)} as {api.user} ({auth}), "
        f"TLS {'verified' if api.ssl_verification else 'NOT verified'}",
        f"balancing: {'on' if bal.enable else 'off (plans only)'}, {_balanced(bal)}, "
        f"types {', '.join(bal.balance_types) or 'none'}",
    ]
    if cluster.maintenance_nodes or cluster.ignore_nodes:
        lines.append(f"maintenance nodes: {', '.join(cluster.maintenance_nodes) or 'none'}; "
                     f"ignored nodes: {', '.join(cluster.ignore_nodes) or 'none'}")
    if bal.pools:
        pools = (f"{name} ({rule.type or 'pin'})" for name, rule in bal.pools.items())
        lines.append(f"pools: {', '.join(pools)}")
    if settings.redis.sentinels:
        lines.append(f"redis: master '{settings.redis.master_name}' through sentinels "
                     f"{', '.join(settings.redis.sentinels)} ({redis.scheme}://, database "
                     f"{redis.path.strip('/') or 0}; locks wait for {settings.redis.replicas_to_wait} replica(s))")
    else:
        lines.append(f"redis: {redis.scheme}://{where}")
    return lines


def import_proxlb_config(
    source: Annotated[Path, typer.Argument(help="ProxLB config: 1.0 INI (proxlb.conf) or YAML (1.1+, 2.x)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
) -> None:
    """Convert a ProxLB config: every key with a counterpart, and on stderr the keys without one."""
    if output is not None and output.resolve() == source.resolve():
        fail(f"{output} is the ProxLB file itself: write the pvebalance config elsewhere")
    try:
        result = read_proxlb(source)
    except ProxlbConfigError as exc:
        fail(str(exc))
    report(result, source)
    problems = validate(result)
    if problems:
        for problem in problems:
            say(f"error: {source}: converted, pvebalance would refuse {problem}")
        fail(f"{source}: {len(problems)} values pvebalance refuses; nothing written")
    text = to_yaml(result, source)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        # 0600: the file may hold the API password or token secret carried over
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    say(f"wrote {output}: {len(result.mapped)} keys mapped, {len(result.unmapped)} not mapped; "
        f"check it with: pvebalance config check -c {output}")


def report(result: ProxlbImport, source: Path) -> None:
    """Key names only, never values: the output may be a terminal and the values may be secrets."""
    say(f"{source}: {result.source_format}")
    for key, target in result.mapped:
        say(f"mapped: {key} -> {target}")
    for key, note in result.notes:
        say(f"note: {key}: {note}")
    for key, why in result.unmapped:
        say(f"not mapped: {key}: {why}")
    for key, why in result.added:
        say(f"added: {key}: {why}")
    for key, default, target, value in result.defaults:
        say(f"default kept: {key} is not set; ProxLB's default {json.dumps(default)} written as "
            f"{target}: {json.dumps(value)} (pvebalance's default differs)")
    if result.unknown:
        for key in result.unknown:
            say(f"unknown: {key}: not a ProxLB setting this importer knows")
        fail(f"{source}: {len(result.unknown)} unknown keys ({', '.join(result.unknown)}); "
             "fix or remove them, nothing written")


app.add_typer(config_app, name="config")
app.command("import-proxlb-config")(import_proxlb_config)
