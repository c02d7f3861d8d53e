"""Models of the Proxmox VE API answers the balancer reads, and their errors in the operator's words.

One model per answer shape: /cluster/resources entries by type (node, qemu/lxc, storage),
/cluster/status, /cluster/options, /cluster/ha/rules, /cluster/ha/resources, /pools and /pools/ID,
/nodes/NODE/status. They follow PVE's
quirks: 0/1 for booleans, a vmid as number or string, optional fields left out, fields the
balancer does not read ignored. A malformed answer ends as one DumpError line naming the path,
the entry and the field, e.g. `/cluster/resources[3] (node pve2): mem: not an integer ('lots')`.

Lists are validated in one call per answer (pydantic's core, not a Python loop per entry), so a
10,000-guest snapshot pays little for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from .errors import OperatorError


class DumpError(OperatorError):
    """A recorded cluster file (or an API answer) that cannot be used, worded for the operator."""



class _Answer(BaseModel):
    # PVE adds fields between releases; the balancer reads only its own and ignores the rest. Numbers
    # are accepted where a name is expected (a node called 1), NaN and infinities are not.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, allow_inf_nan=False)


class ApiNode(_Answer):
    """A `type: node` entry of /cluster/resources; an offline node carries no figures at all."""

    node: str
    status: str | None = None
    hastate: str | None = None
    cpu: NonNegativeFloat | None = None
    maxcpu: NonNegativeFloat | None = None
    mem: NonNegativeInt | None = None
    maxmem: NonNegativeInt | None = None


class ApiGuest(_Answer):
    type: Literal["qemu", "lxc"]
    vmid: int = Field(gt=0)  # PVE sends a number; some tools a string: both are read
    node: str
    name: str | None = None
    status: str | None = None
    template: bool | None = None  # 0/1
    lock: str | None = None
    tags: str | None = None
    pool: str | None = None
    hastate: str | None = None
    cpu: NonNegativeFloat | None = None
    maxcpu: NonNegativeFloat | None = None  # a container's cpulimit may be fractional
    mem: NonNegativeInt | None = None
    maxmem: NonNegativeInt | None = None
    maxdisk: NonNegativeInt | None = None


class ApiStorage(_Answer):
    node: str
    storage: str
    shared: bool | None = None  # 0/1
    content: str | None = None
    disk: NonNegativeInt | None = None
    maxdisk: NonNegativeInt | None = None
    status: str | None = None  # "available"; "unknown" when the node cannot reach it, or it is disabled


class ApiStatusEntry(_Answer):
    """/cluster/status: one `cluster` entry (name, quorate 0/1) and one per node."""

    type: str
    name: str | None = None
    quorate: bool | None = None


class ApiCrs(_Answer):
    """datacenter.cfg's `crs`: the HA scheduler and PVE 9.2's automatic rebalancing of HA resources.
    The threshold and margin are percent, 0-100, since pve-cluster 9.1.5 (defaults 30 and 10; they
    were fractions before): a value is read as PVE 9.2 reads it."""

    ha: str = "basic"  # the CRS scheduler: basic, static or dynamic
    ha_auto_rebalance: bool = Field(False, alias="ha-auto-rebalance")
    ha_auto_rebalance_threshold: float = Field(30.0, ge=0, le=100, alias="ha-auto-rebalance-threshold")
    ha_auto_rebalance_margin: float = Field(10.0, ge=0, le=100, alias="ha-auto-rebalance-margin")

    @property
    def rebalances(self) -> bool:
        """Whether PVE's CRM rebalances HA resources: only with the static or dynamic scheduler
        (pve-ha-manager Manager.pm load_balance returns at once under `basic`)."""
        return self.ha_auto_rebalance and self.ha in ("static", "dynamic")


class ApiOptions(_Answer):
    crs: ApiCrs | None = None

    @field_validator("crs", mode="before")
    @classmethod
    def _property_string(cls, value: Any) -> Any:
        """datacenter.cfg's own form, `ha=static,ha-auto-rebalance=1`, as some tools pass it on."""
        if isinstance(value, str):
            return dict(item.partition("=")[::2] for item in value.split(",") if item)
        return value


class ApiHaRule(_Answer):
    rule: str
    type: str | None = None  # a rule of no type the balancer knows is skipped, as one of a new type
    resources: str = ""
    nodes: str | None = None
    strict: bool | None = None  # 0/1
    affinity: Literal["positive", "negative"] | None = None
    disable: bool | None = None  # 0/1


class ApiHaResource(_Answer):
    """An entry of /cluster/ha/resources (raw config: PVE leaves defaults out)."""

    sid: str  # "vm:100", "ct:101"
    state: str | None = None  # requested state; "ignored": the HA stack leaves the guest alone
    auto_rebalance: bool = Field(True, alias="auto-rebalance")  # PVE 9.2, 0/1; default 1
    failback: bool = True  # 0/1; default 1: back to its node-affinity rule's top group when it can


class ApiCpuInfo(_Answer):
    model: str | None = None
    cpus: NonNegativeInt | None = None


class ApiNodeStatus(_Answer):
    """/nodes/{node}/status: the balancer reads only `cpuinfo`."""

    cpuinfo: ApiCpuInfo | None = None


class ApiPoolMember(_Answer):
    type: str
    vmid: int | None = Field(None, gt=0)


class ApiPool(_Answer):
    """An entry of /pools; PVE 8.1+ may inline its members (GET /pools?poolid=ID)."""

    poolid: str
    members: list[ApiPoolMember] | None = None


class ApiPoolDetail(_Answer):
    members: list[ApiPoolMember] = Field(default_factory=list)


T = TypeVar("T")
_NODES = TypeAdapter(list[ApiNode])
_GUESTS = TypeAdapter(list[ApiGuest])
_STORAGES = TypeAdapter(list[ApiStorage])
_STATUS = TypeAdapter(list[ApiStatusEntry])
_HA_RULES = TypeAdapter(list[ApiHaRule])
_POOLS = TypeAdapter(list[ApiPool])
_OPTIONS = TypeAdapter(ApiOptions)
_POOL_DETAIL = TypeAdapter(ApiPoolDetail)
_HA_RESOURCES = TypeAdapter(list[ApiHaResource])
_NODE_STATUS = TypeAdapter(ApiNodeStatus)
_WHAT = {"int_type": "not an integer", "int_parsing": "not an integer", "int_from_float": "not an integer",
         "float_type": "not a number", "float_parsing": "not a number", "finite_number": "not a finite number",
         "bool_type": "not 0 or 1", "bool_parsing": "not 0 or 1", "string_type": "not a string",
         "list_type": "not a list", "model_type": "not an object", "model_attributes_type": "not an object",
         "dict_type": "not an object", "missing": "missing"}


def show(value: Any, limit: int = 40) -> str:
    """A value as the operator typed it, on one line and short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def word(value: Any) -> str:
    return show(value)[1:-1] if isinstance(value, str) else show(value)


def explain(exc: ValidationError, where: Callable[[tuple[Any, ...]], tuple[str, tuple[Any, ...]]]) -> str:
    """The first problem, as `PATH[i] (what it is): field: what is wrong (value)`, on one line."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    place, rest = where(tuple(err["loc"]))
    field = ".".join(str(p) for p in rest)
    what = _WHAT.get(err["type"]) or str(err["msg"])
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"):
        what = str(err["msg"]).replace("Input should be", "must be")
    shown = "" if err["type"] == "missing" else f" ({show(err.get('input'))})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{place}: {field + ': ' if field else ''}{what}{shown}{more}"


def validated(adapter: TypeAdapter[T], data: Any, path: str, label: Callable[[Any], str] | None = None) -> T:
    """Validate one answer; a list answer's errors name the entry by index and by what it is."""

    def where(loc: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        if loc and isinstance(loc[0], int) and isinstance(data, list):
            text = f"{path}[{loc[0]}]"
            described = label(data[loc[0]]) if label and isinstance(data[loc[0]], dict) else ""
            return (f"{text} ({described})" if described else text), loc[1:]
        return path, loc

    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise DumpError(explain(exc, where)) from None


def _resource_label(entry: dict[str, Any]) -> str:
    kind, node = entry.get("type"), entry.get("node")
    kind_text = word(kind) if kind is not None else "entry"
    if kind == "node":
        return f"node {word(node)}"
    if kind == "storage":
        return f"storage {word(entry.get('storage'))} on {word(node)}"
    if "vmid" in entry:
        return f"{kind_text if kind is not None else 'vmid'} {word(entry['vmid'])}"
    return f"{kind_text} on {word(node)}" if node is not None else kind_text


def split_resources(api: Mapping[str, Any]) -> tuple[list[ApiNode], list[ApiGuest], list[ApiStorage]]:
    """/cluster/resources by type, each part validated in one pass; other types (sdn, pool) are skipped."""
    answer = api.get("/cluster/resources")
    if not isinstance(answer, list):
        raise DumpError(f"/cluster/resources: not a list ({show(answer)})")
    parts: dict[str, tuple[list[int], list[Any]]] = {"node": ([], []), "guest": ([], []), "storage": ([], [])}
    for i, res in enumerate(answer):
        if not isinstance(res, dict):
            raise DumpError(f"/cluster/resources[{i}]: not an object ({show(res)})")
        kind = res.get("type")
        part = parts.get("guest" if kind in ("qemu", "lxc") else kind) if isinstance(kind, str) else None
        if part is not None:
            part[0].append(i)
            part[1].append(res)
        elif not isinstance(kind, str):
            described = f" ({_resource_label(res)})" if "node" in res or "vmid" in res else ""
            raise DumpError(f"/cluster/resources[{i}]{described}: type: "
                            + ("missing" if kind is None else f"not a string ({show(kind)})"))

    def check(name: str, adapter: TypeAdapter[list[T]]) -> list[T]:
        indexes, entries = parts[name]
        try:
            return adapter.validate_python(entries)
        except ValidationError as exc:
            def where(loc: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
                i = indexes[loc[0]]
                return f"/cluster/resources[{i}] ({_resource_label(answer[i])})", loc[1:]
            raise DumpError(explain(exc, where)) from None

    return check("node", _NODES), check("guest", _GUESTS), check("storage", _STORAGES)


def read_status(answer: Any) -> list[ApiStatusEntry]:
    return validated(_STATUS, answer if answer is not None else [], "/cluster/status")


def read_options(answer: Any) -> ApiOptions:
    return validated(_OPTIONS, answer if answer is not None else {}, "/cluster/options")


def read_ha_rules(answer: Any) -> list[ApiHaRule]:
    return validated(_HA_RULES, answer if answer is not None else [], "/cluster/ha/rules",
                     lambda e: f"rule {word(e.get('rule'))}")


def read_pools(answer: Any) -> list[ApiPool]:
    return validated(_POOLS, answer if answer is not None else [], "/pools", lambda e: f"pool {word(e.get('poolid'))}")


def read_pool_detail(answer: Any, path: str) -> ApiPoolDetail:
    return validated(_POOL_DETAIL, answer, path)


def read_ha_resources(answer: Any) -> list[ApiHaResource]:
    return validated(_HA_RESOURCES, answer if answer is not None else [], "/cluster/ha/resources",
                     lambda e: f"resource {word(e.get('sid'))}")


def read_node_status(answer: Any, path: str) -> ApiNodeStatus:
    return validated(_NODE_STATUS, answer, path)
