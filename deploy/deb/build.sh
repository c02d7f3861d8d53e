#!/usr/bin/env bash
# deploy/deb/build.sh [OUT_DIR]: the Debian package, OUT_DIR/pvebalance_VERSION_all.deb (default: dist/).
#
# What it holds: pvebalance's wheel (pure Python) and the runtime dependencies' versions it was tested
# with (constraints.txt, from the environment PYTHON runs in: .venv, set up by ./dev.sh), which
# postinst installs into a virtual environment under /opt/pvebalance; the systemd units of
# deploy/systemd; /etc/pvebalance/pvebalance.yaml (a conffile); a system user made by postinst;
# Recommends: redis-server. Built from the files git tracks, as they are in the tree (the tree itself
# is not written to), with dpkg-deb alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${1:-$ROOT/dist}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || { echo "error: $PY not found: run ./dev.sh setup first (or set PYTHON)" >&2; exit 2; }
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb not found (apt-get install dpkg)" >&2; exit 2; }
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
DEB=$OUT/pvebalance_${VERSION}_all.deb

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/wheel" "$OUT"

# 1. the wheel, from a copy of the tracked files (a build writes build/ and *.egg-info beside them)
git ls-files -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$work/src"
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$work/wheel" "$work/src" \
  > "$work/wheel.log" 2>&1 || { tail -20 "$work/wheel.log" >&2; echo "error: the wheel does not build" >&2; exit 1; }

# 2. the package's tree
pkg=$work/pkg
install -d "$pkg/DEBIAN" "$pkg/usr/share/pvebalance" "$pkg/lib/systemd/system" "$pkg/etc/pvebalance" \
  "$pkg/usr/bin" "$pkg/usr/share/doc/pvebalance"
"$PY" deploy/deb/constraints.py pvebalance > "$pkg/usr/share/pvebalance/constraints.txt"
install -m 644 "$work"/wheel/pvebalance-*.whl "$pkg/usr/share/pvebalance/"
install -m 644 deploy/systemd/*.service deploy/systemd/pvebalance.target "$pkg/lib/systemd/system/"
install -m 644 deploy/deb/pvebalance.yaml "$pkg/etc/pvebalance/pvebalance.yaml"
ln -s /opt/pvebalance/bin/pvebalance "$pkg/usr/bin/pvebalance"
install -m 644 config/pvebalance.example.yaml docs/install.md deploy/systemd/pvebalance.env.example \
  "$pkg/usr/share/doc/pvebalance/"
cat > "$pkg/usr/share/doc/pvebalance/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pvebalance
Source: https://github.com/pvebalance/pvebalance

Files: *
Copyright: the pvebalance authors
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
install -m 755 deploy/deb/postinst deploy/deb/prerm deploy/deb/postrm "$pkg/DEBIAN/"
echo /etc/pvebalance/pvebalance.yaml > "$pkg/DEBIAN/conffiles"
sed "s/@VERSION@/$VERSION/" deploy/deb/control.in > "$pkg/DEBIAN/control"
echo "Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)" >> "$pkg/DEBIAN/control"

# 3. the package
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$DEB" >/dev/null
echo "$DEB"
