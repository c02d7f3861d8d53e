"""Properties: whatever the input, each loader gives its result or its own clear error, nothing else.

- the config loader: a Settings or a ConfigError, for any YAML mapping, overrides or PVEBALANCE_* variables;
- the scenario / API-answer loader: a ClusterSnapshot or a DumpError, for any JSON (file or answers);
- every message model: a model or a pydantic ValidationError, for any JSON text or bytes.

Inputs are drawn around valid documents (a real scenario, a real config) as well as at random, so
the examples reach the validation of single fields and not only "not an object" at the top.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pvebalance.actions import KINDS
from pvebalance.shared import jobs, message, models
from pvebalance.shared.apidump import DumpError, load_dump, snapshot_from_api
from pvebalance.shared.config import ConfigError, Settings, load_settings
from tests.helpers import REPO

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
          | st.sampled_from(["0", "1", "online", "offline", "qemu", "lxc", "node", "storage", "running", "lots",
                             "100", "-1", "1e400", "NaN", "pve1", "anti-affinity", "affinity"]))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


# --- the config loader ---------------------------------------------------------------------------

SECTIONS = {name: list(field.annotation.model_fields) for name, field in Settings.model_fields.items()
            if inspect.isclass(field.annotation) and issubclass(field.annotation, BaseModel)}
section_names = st.sampled_from([*SECTIONS, "unknown_section"])


@st.composite
def config_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly the real sections and keys, with any value; sometimes keys nobody knows."""
    doc: dict[str, Any] = {}
    for section in draw(st.lists(section_names, max_size=4, unique=True)):
        known = [*SECTIONS.get(section, []), "pass", "typo"]
        keys = draw(st.lists(st.sampled_from(known), max_size=4, unique=True))
        doc[section] = {k: draw(json_values) for k in keys} if draw(st.booleans()) else draw(json_values)
    return doc


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def settings_or_config_error(call: Any) -> None:
    try:
        result = call()
    except ConfigError as exc:
        assert "\n" not in str(exc), "one line"
        return
    assert isinstance(result, Settings)


@BOUNDED
@given(config_docs())
def test_any_yaml_mapping_gives_settings_or_a_config_error(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(doc))
        settings_or_config_error(lambda: load_settings(path))


@BOUNDED
@given(st.text(max_size=200))
def test_any_text_as_config_file_gives_settings_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        settings_or_config_error(lambda: load_settings(path))


@BOUNDED
@given(config_docs())
def test_any_overrides_give_settings_or_a_config_error(doc: dict[str, Any]) -> None:
    settings_or_config_error(lambda: load_settings(None, **doc))


env_names = st.builds(lambda s, k: f"PVEBALANCE_{s.upper()}__{k.upper()}", section_names,
                      st.sampled_from(sorted({k for keys in SECTIONS.values() for k in keys} | {"typo"})))
env_values = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30) \
    | json_values.map(json.dumps)


@BOUNDED
@given(st.dictionaries(env_names, env_values, max_size=3), st.none() | env_values)
def test_any_environment_gives_settings_or_a_config_error(variables: dict[str, str], redis_url: str | None) -> None:
    if redis_url is not None:
        variables = {**variables, "REDIS_URL": redis_url}
    with environment(variables):
        settings_or_config_error(load_settings)


# --- the scenario / API-answer loader ------------------------------------------------------------

BASE = json.loads((REPO / "pvebalance" / "scenarios" / "groups.json").read_text())["api"]
API_PATHS = sorted(BASE)


@st.composite
def api_answers(draw: st.DrawFn) -> Any:
    """A real cluster's answers with a few fields, entries or whole answers replaced by anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    api = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from([*API_PATHS, "/cluster/status", "/cluster/options"]))
        answer = api.get(path)
        choice = draw(st.integers(0, 3))
        if choice == 0 or not isinstance(answer, list | dict) or not answer:
            api[path] = draw(json_values)
        elif isinstance(answer, list):
            i = draw(st.integers(0, len(answer) - 1))
            entry = answer[i]
            if choice == 1 or not isinstance(entry, dict) or not entry:
                answer[i] = draw(json_values)
            else:
                key = draw(st.sampled_from(sorted(entry)))
                if choice == 2:
                    entry[key] = draw(json_values)
                else:
                    del entry[key]
        else:
            key = draw(st.sampled_from(sorted(answer)) | st.text(max_size=8))
            answer[key] = draw(json_values)
    return api


def snapshot_or_dump_error(api: Any) -> None:
    try:
        snap = snapshot_from_api(api)
    except DumpError as exc:
        assert "\n" not in str(exc), "one line"
        return
    assert isinstance(snap, models.ClusterSnapshot)
    # what the collector publishes, the planner must be able to read back
    models.ClusterSnapshot.model_validate_json(snap.model_dump_json())


@BOUNDED
@given(api_answers())
def test_any_api_answers_give_a_snapshot_or_a_dump_error(api: Any) -> None:
    snapshot_or_dump_error(api)


@BOUNDED
@given(st.one_of(
    json_values.map(json.dumps),
    api_answers().map(lambda api: json.dumps({"format": "pve-api-dump/1", "api": api})),
    st.fixed_dictionaries({"format": st.just("pve-api-dump/1"), "api": st.just(BASE), "name": json_values,
                           "operator_config": json_values}).map(json.dumps),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
))
def test_any_scenario_file_gives_a_snapshot_or_a_dump_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.json"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            doc = load_dump(path)
        except DumpError as exc:
            assert "\n" not in str(exc)
            return
    snapshot_or_dump_error(doc["api"])


# --- every message model -------------------------------------------------------------------------

# The messages' own modules and each registered kind's (its action and its job: pvebalance/actions/)
MESSAGE_MODULES = (models, jobs, message, *(sys.modules[k.action.__module__] for k in KINDS))
MESSAGE_MODELS = sorted((m for module in MESSAGE_MODULES for m in vars(module).values()
                         if inspect.isclass(m) and issubclass(m, BaseModel) and m.__module__ == module.__name__),
                        key=lambda m: m.__name__)


def _valid_documents() -> dict[str, Any]:
    snap = snapshot_from_api(BASE, cluster="groups")
    from pvebalance.engine import Policy, plan_balance

    plan = plan_balance(snap, Policy())
    migration = plan.migrations[0]
    job = jobs.MigrationJob(job_id="j", plan_id=plan.plan_id, vmid=migration.vmid, name=migration.name,
                            guest_type=migration.type, source=migration.source, target=migration.target,
                            online=migration.online)
    disk = models.DiskMove(vmid=1, guest_type=models.GuestType.QEMU, node="a", disk="scsi0", source="s1",
                           target="s2", size=2**30)
    disk_job = jobs.DiskMoveJob(job_id="d", plan_id="p", vmid=1, name="x", guest_type=models.GuestType.QEMU,
                                source="s1", target="s2", node="a", disk="scsi0", size=2**30)
    event = jobs.JobStatusEvent(job_id="j", plan_id="p", vmid=1, source="a", target="b",
                                state=jobs.JobState.RUNNING)
    found: list[BaseModel] = [snap, plan, job, disk_job, event, snap.nodes[0], snap.guests[0], migration, disk,
                              plan.before, *snap.ha_rules[:1], *plan.before.nodes.values()]
    return {type(m).__name__: json.loads(m.model_dump_json()) for m in found}


VALID = _valid_documents()


def _mutated(doc: Any, draw: st.DrawFn) -> Any:
    """The document with one value somewhere inside replaced by anything."""
    if not isinstance(doc, dict | list) or not doc or draw(st.integers(0, 3)) == 0:
        return draw(json_values)
    doc = copy.copy(doc)
    key = draw(st.sampled_from(sorted(doc))) if isinstance(doc, dict) else draw(st.integers(0, len(doc) - 1))
    doc[key] = _mutated(doc[key], draw)
    return doc


@st.composite
def model_inputs(draw: st.DrawFn, name: str) -> str | bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1 or name not in VALID:
        return json.dumps(draw(json_values))
    return json.dumps(_mutated(VALID[name], draw))


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
def test_every_message_model_reads_any_input_or_raises_validation_error(model: type[BaseModel]) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(model_inputs(model.__name__))
    def check(raw: str | bytes) -> None:
        try:
            result = model.model_validate_json(raw)
        except ValidationError:
            return
        assert isinstance(result, model)

    check()


def test_the_property_tests_cover_every_model() -> None:
    names = {m.__name__ for m in MESSAGE_MODELS}
    assert {"ClusterSnapshot", "Plan", "MigrationJob", "DiskMoveJob", "DiskMove", "JobStatusEvent", "NodeState",
            "GuestState"} <= names
    assert {"ClusterSnapshot", "Plan", "MigrationJob", "DiskMoveJob", "DiskMove", "JobStatusEvent"} <= set(VALID)
