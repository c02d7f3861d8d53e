#!/usr/bin/env bash
# One entry point for a fresh machine with Python >= 3.11:
#   ./dev.sh demo [ARGS]   set up .venv, then run `pvebalance demo` on the bundled simulated cluster
#   ./dev.sh test [ARGS]   set up .venv (with test tools), then run the whole test suite
#   ./dev.sh bench [ARGS]  set up .venv, then run the benchmarks
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
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[test]'; } >"$VENV/install.log" 2>&1; then
      tail -n 30 "$VENV/install.log" >&2
      echo "error: installing pvebalance into $VENV failed (full log: $VENV/install.log)" >&2
      exit 2
    fi
    touch "$stamp"
  fi
}

cmd=${1:-demo}
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/pvebalance" demo "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  bench) setup; exec "$VENV/bin/python" -m bench "$@" ;;
  lint)  setup; "$VENV/bin/ruff" check . && "$VENV/bin/python" -m mypy ;;
  setup) setup ;;
  *) echo "usage: $0 demo|test|bench|lint|setup [ARGS]" >&2; exit 2 ;;
esac
