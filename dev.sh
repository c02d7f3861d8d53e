#!/usr/bin/env bash
# One entry point for a fresh machine with Python >= 3.11:
#   ./dev.sh demo [ARGS]   set up .venv, then run `pvebalance demo` on the bundled simulated cluster
#   ./dev.sh test [ARGS]   set up .venv (with test tools), then lint (ruff, mypy) and run every test
#   ./dev.sh bench [ARGS]  set up .venv, then run the benchmarks
#   ./dev.sh soak --seeds N  the fault-injection suite, N seeds in a row
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  local stamp="$VENV/.installed"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setting up $VENV (log: $VENV/install.log)..." >&2
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[test,demo]'; } >"$VENV/install.log" 2>&1; then
      tail -n 30 "$VENV/install.log" >&2
      echo "error: installing pvebalance into $VENV failed (full log: $VENV/install.log)" >&2
      exit 2
    fi
    touch "$stamp"
  fi
}

# mypy cannot follow the package-dir mapping of the editable install, so it checks a tree of
# symlinks laid out as the installed package.
typecheck() {
  local root=build/typecheck
  rm -rf "$root" && mkdir -p "$root/pvebalance"
  for f in pvebalance/*.py; do ln -s "../../../$f" "$root/pvebalance/"; done
  for d in shared engine services simulator; do ln -s "../../../$d" "$root/pvebalance/$d"; done
  (cd "$root" && "../../$VENV/bin/mypy" --config-file ../../pyproject.toml -p pvebalance)
}

cmd=${1:-demo}
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/pvebalance" demo "$@" ;;
  test)  setup; "$VENV/bin/ruff" check . && typecheck &&
         exec "$VENV/bin/python" -m pytest -q -n "${PVEBALANCE_TEST_WORKERS:-3}" --dist loadfile "$@" ;;
  bench) setup; exec "$VENV/bin/python" -m bench "$@" ;;
  lint)  setup; "$VENV/bin/ruff" check . && typecheck ;;
  soak)  setup; exec "$VENV/bin/python" -m tests.faultsuite "$@" ;;  # the fault suite: soak --seeds N
  setup) setup ;;
  *) echo "usage: $0 demo|test|bench|soak|lint|setup [ARGS]" >&2; exit 2 ;;
esac
