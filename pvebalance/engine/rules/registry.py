"""Every rule family, in the order a plan repairs them: the most urgent first (a node being drained),
then where guests may run, then who runs with whom; last the rules that only say where a guest may not
go (they never move a guest by themselves). A new family is one module and one line here."""

from __future__ import annotations

from .affinity import Affinity
from .anti_affinity import AntiAffinity
from .family import Family
from .ha_node_affinity import HaNodeAffinity
from .ha_resource_affinity import HaResourceAffinity
from .host_cpu import HostCpu
from .maintenance import Maintenance
from .no_return import NoReturn
from .pins import Pins
from .rejected import RejectedMoves
from .vcpu_cores import VcpuCores

FAMILIES: tuple[Family, ...] = (
    Maintenance(),
    Pins(),
    HaNodeAffinity(),
    Affinity(),
    HaResourceAffinity(),
    AntiAffinity(),
    VcpuCores(),
    HostCpu(),
    NoReturn(),
    RejectedMoves(),
)
