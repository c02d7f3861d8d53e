"""The Helm chart, offline (deploy/check.sh runs this with its test tools):

- lint (Helm v4 as a library, helm-python-sdk);
- values.yaml, and the all-options file, against values.schema.json (jsonschema, and Helm's own check);
- every `.Values.x` a template reads exists in values.yaml (a typo renders as empty, silently);
- rendered with the default values (which must refuse to install without a token, with a clear
  message), with the defaults plus a token, with every option on (the chart's own Redis through
  Sentinel), and with an external Redis through Sentinel; every object validated
  strictly against the Kubernetes schemas (kubernetes-validate); the ServiceMonitor, a CRD these
  schemas do not hold, against the fields the Prometheus operator requires.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

VALUES_REF = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
# deployments.yaml and pdb.yaml read per-component values as `$c.x` from `index $.Values $component`
COMPONENT_REF = re.compile(r"\$c((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
COMPONENTS = ("collector", "planner", "migrator", "api")
problems: list[str] = []


def fail(text: str) -> None:
    problems.append(text)
    print(f"  FAIL {text}")


def has_path(values: Any, path: list[str]) -> bool:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def check_values_refs(chart: Path) -> None:
    """Every .Values path in the chart's templates (and each subchart's) is in its values.yaml."""
    for root in [chart, *sorted(p for p in (chart / "charts").glob("*") if p.is_dir())]:
        values = yaml.safe_load((root / "values.yaml").read_text()) or {}
        count, before = 0, len(problems)
        for template in sorted((root / "templates").glob("*")):
            text = template.read_text()
            for match in VALUES_REF.finditer(text):
                count += 1
                path = match.group(1).lstrip(".").split(".")
                if not has_path(values, path):
                    fail(f"{template.relative_to(chart.parent)} reads .Values.{'.'.join(path)}, not in values.yaml")
            for match in COMPONENT_REF.finditer(text):
                path = match.group(1).lstrip(".").split(".")
                for component in COMPONENTS:
                    count += 1
                    if not has_path(values, [component, *path]):
                        fail(f"{template.name} reads .Values.{component}.{'.'.join(path)}, not in values.yaml")
        if len(problems) == before:
            print(f"  {count} .Values references in {root.name}'s templates: all in its values.yaml")


def check_schema(chart: Path, files: list[Path]) -> None:
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    loaded = helm.Chart.load(chart)
    for path in files:
        values = yaml.safe_load(path.read_text())
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
        for e in errors:
            fail(f"{path.name}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        try:
            loaded.validate_schema(loaded.merge_values(values))
        except helm.HelmError as exc:
            fail(f"{path.name}: Helm's schema check: {exc}")
        if not errors:
            print(f"  {path.name} matches values.schema.json")
    # and the schema refuses a typo
    typo = yaml.safe_load((chart / "values.yaml").read_text()) | {"migrators": {"replicas": 3}}
    if jsonschema.Draft7Validator(schema).is_valid(typo):
        fail("values.schema.json accepts an unknown key (migrators)")


def objects(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, text in sorted(rendered.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((name, doc))
    return out


def validate_servicemonitor(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec", {})
    errors = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append("apiVersion is not monitoring.coreos.com/v1")
    if not isinstance(spec.get("selector", {}).get("matchLabels"), dict):
        errors.append("spec.selector.matchLabels missing")
    for ep in spec.get("endpoints") or [{}]:
        if not ep.get("port") or not str(ep.get("path", "")).startswith("/"):
            errors.append("an endpoint lacks port or path")
    return errors


def render_and_validate(chart: Path, label: str, values: dict[str, Any], version: str) -> list[dict[str, Any]]:
    loaded = helm.Chart.load(chart)
    try:
        rendered = loaded.render(values, name="pvebalance", namespace="pvebalance", is_install=True)
    except helm.HelmError as exc:
        fail(f"{label}: does not render: {exc}")
        return []
    docs = objects(rendered)
    kinds: dict[str, int] = {}
    for name, doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if doc["kind"] == "ServiceMonitor":
            for e in validate_servicemonitor(doc):
                fail(f"{label}: {name}: ServiceMonitor: {e}")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            fail(f"{label}: {name}: {doc['kind']} {doc['metadata'].get('name')}: {getattr(exc, 'message', exc)}")
    print(f"  {label}: {len(docs)} objects valid for Kubernetes {version}: "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    return [d for _, d in docs]


def check_hardened(label: str, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        name = doc["metadata"]["name"]
        if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{label}: {name}: no RuntimeDefault seccomp profile")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            drops_all = sc.get("capabilities", {}).get("drop") == ["ALL"]
            if not (pod["securityContext"].get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
                    and sc.get("allowPrivilegeEscalation") is False and drops_all):
                fail(f"{label}: {name}: container {c['name']} is not hardened")
            if not (c.get("livenessProbe") and c.get("resources")):
                fail(f"{label}: {name}: container {c['name']} has no liveness probe or resources")


def check_sentinel_env(label: str, docs: list[dict[str, Any]], sentinels: list[str], password: bool = False) -> None:
    """Every service (rq's workers too) is told the sentinels and the master's name, and the password
    comes from its Secret: pvebalance reads these as redis.sentinels, redis.master_name, redis.password."""
    services = [d for d in docs if d["kind"] == "Deployment"]
    for doc in services:
        env = {e["name"]: e for e in doc["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        given = json.loads(env.get("PVEBALANCE_REDIS__SENTINELS", {}).get("value", "[]"))
        if given != sentinels or not env.get("PVEBALANCE_REDIS__MASTER_NAME", {}).get("value"):
            fail(f"{label}: {doc['metadata']['name']}: sentinels {given}, expected {sentinels}")
        if password and "secretKeyRef" not in env.get("PVEBALANCE_REDIS__PASSWORD", {}).get("valueFrom", {}):
            fail(f"{label}: {doc['metadata']['name']}: no PVEBALANCE_REDIS__PASSWORD from its Secret")
    if services and len(problems) == 0:
        print(f"  {label}: {len(services)} services ask the sentinels {', '.join(sentinels)}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chart", type=Path, required=True)
    parser.add_argument("--all-on", type=Path, required=True)
    parser.add_argument("--kubernetes-version", default="1.30.0")
    args = parser.parse_args()
    chart, version = args.chart.resolve(), args.kubernetes_version

    report = helm.lint(chart, {"proxmox": {"tokenSecret": "x"}}, strict=True, kube_version=f"v{version}")
    for m in report.get("messages") or []:
        if m.get("severity", 0) >= 2:
            fail(f"helm lint: {m.get('path')}: {m.get('error')}")
    for e in report.get("errors") or []:
        fail(f"helm lint: {e}")
    print(f"  helm lint --strict: {len(report.get('messages') or [])} messages, none a warning or an error"
          if not problems else "  helm lint found problems")

    check_values_refs(chart)
    check_schema(chart, [chart / "values.yaml", args.all_on])

    try:  # the defaults as shipped: no token anywhere, so the install must stop with a clear message
        helm.Chart.load(chart).render({}, name="pvebalance", namespace="pvebalance", is_install=True)
        fail("the default values render without a Proxmox token: the install would start services that cannot log in")
    except helm.HelmError as exc:
        if "proxmox.tokenSecret" not in str(exc):
            fail(f"the default values fail to render for another reason: {exc}")
        else:
            print("  default values: refused without a token, with: set proxmox.tokenSecret, or proxmox.existingSecret")
    default_docs = render_and_validate(chart, "defaults + proxmox.tokenSecret", {"proxmox": {"tokenSecret": "x"}},
                                       version)
    all_docs = render_and_validate(chart, "every option on", yaml.safe_load(args.all_on.read_text()), version)
    kinds = {d["kind"] for d in all_docs}
    for kind in ("Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceMonitor",
                 "ServiceAccount"):
        if kind not in kinds:
            fail(f"every option on: no {kind} rendered")
    check_hardened("defaults", default_docs)
    check_hardened("every option on", all_docs)
    check_sentinel_env("every option on", all_docs, ["pvebalance-redis-0.pvebalance-redis-headless:26379",
                                                     "pvebalance-redis-1.pvebalance-redis-headless:26379",
                                                     "pvebalance-redis-2.pvebalance-redis-headless:26379"])
    external = ["10.0.0.11:26379", "10.0.0.12:26379", "10.0.0.13:26379"]
    sentinel_docs = render_and_validate(chart, "external Redis through Sentinel", {
        "proxmox": {"tokenSecret": "x"},
        "externalRedis": {"sentinels": external, "masterName": "mymaster", "passwordSecret": "redis-pass"}}, version)
    check_sentinel_env("external Redis through Sentinel", sentinel_docs, external, password=True)
    if problems:
        print(f"{len(problems)} problems in the Helm chart", file=sys.stderr)
        return 1
    print("  Helm chart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
