"""Print pvebalance's runtime dependencies, every one down the tree, pinned to the versions installed
in this environment (the one the tests ran in): the Debian package installs exactly these.

Extras (demo, test) are left out: the package runs the services and the command against a real
cluster (`pvebalance simulator` and `demo` say they need pvebalance[demo])."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(root: str) -> dict[str, str]:
    """name -> installed version of every distribution `root` needs at run time (root excluded)."""
    seen: dict[str, str] = {}
    todo = [(root, frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"error: {name} is needed but not installed in {sys.prefix}")
        for text in dist.requires or []:
            req = Requirement(text)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in wanted):
                continue
            if canonicalize_name(req.name) == canonicalize_name(root):
                continue  # pvebalance[demo] naming itself
            key = canonicalize_name(req.name)
            new_extras = frozenset(req.extras)
            if key not in seen or new_extras:
                seen[key] = distribution(req.name).version
                todo.append((req.name, new_extras))
    return seen


if __name__ == "__main__":
    for name, version in sorted(closure(sys.argv[1] if len(sys.argv) > 1 else "pvebalance").items()):
        print(f"{name}=={version}")
