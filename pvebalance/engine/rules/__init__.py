"""The rules a plan must never break, one family per module (see `registry.FAMILIES`).

- fixed guests never move (`fixed`): `plb_ignore_*` tags, guests excluded in the config, templates,
  locked guests, guests on ignored nodes, guests in cooldown, running VMs with local devices;
- `maintenance`: nodes being drained give their guests away and take none;
- `pins` (`plb_pin_NODE` tags, pinned pools) and `ha_node_affinity` (PVE 9 HA node-affinity): the
  nodes a guest may run on;
- `affinity` (`plb_affinity_NAME`, affinity pools) and positive `ha_resource_affinity`: groups that
  end on one node (groups sharing a guest move as one: a guest cannot be in two places);
- `anti_affinity` (`plb_anti_affinity_NAME`, anti-affinity pools) and negative
  `ha_resource_affinity`: groups that end on different nodes;
- `vcpu_cores`, `host_cpu`, `no_return`: nodes a guest may not go to (fewer cores than its vCPUs,
  another CPU model for a `cpu: host` VM, a node it left within 24 h); they never move a guest.

`fixed` also holds the adaptive cooldown (`Policy.history`), `ignore_guests` name patterns and the
HA resources PVE's own auto-rebalance manages (its `auto-rebalance` flag 1).
"""

from .book import Constraints, build_constraints
from .family import Breach, Family, Fix, Group, Restriction
from .fixed import fixed_reason
from .registry import FAMILIES

__all__ = ["FAMILIES", "Breach", "Constraints", "Family", "Fix", "Group", "Restriction", "build_constraints",
           "fixed_reason"]
