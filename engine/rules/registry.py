"""Every rule family, in the order a plan repairs them: the most urgent first (a node being drained),
then where guests may run, then who runs with whom. A new family is one module and one line here."""

from __future__ import annotations

from .affinity import Affinity
from .anti_affinity import AntiAffinity
from .family import Family
from .ha_node_affinity import HaNodeAffinity
from .ha_resource_affinity import HaResourceAffinity
from .maintenance import Maintenance
from .pins import Pins

FAMILIES: tuple[Family, ...] = (
    Maintenance(),
    Pins(),
    HaNodeAffinity(),
    Affinity(),
    HaResourceAffinity(),
    AntiAffinity(),
)
