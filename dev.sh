#!/usr/bin/env bash
# One entry point for a fresh machine with Python >= 3.11:
#   ./dev.sh demo [ARGS]   set up .venv, then run `pvebalance demo` on the bundled simulated cluster
#   ./dev.sh test [ARGS]   set up .venv (with test tools), then lint (ruff, mypy) and run every test
#   ./dev.sh bench [ARGS]  set up .venv, then run the benchmarks
#   ./dev.sh soak --seeds N  the fault-injection suite, N seeds in a row
#   ./dev.sh soak --long [--minutes 30]  weeks of churn, time-compressed: Redis and the services stay flat
#   ./dev.sh needs         install what the tests need beyond Python (redis-server, Chromium; apt as root)
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
  # The package's bytecode, as `pip install` (not an editable one) writes it: where
  # PYTHONDONTWRITEBYTECODE is set (CI images, containers) every command would otherwise compile the
  # tree again, 0.13 s of each `pvebalance plan`. Only what changed is compiled (0.2 s when nothing did).
  "$VENV/bin/python" -m compileall -q pvebalance shared services >/dev/null
}

# mypy cannot follow the package-dir mapping of the editable install, so it checks a tree of
# symlinks laid out as the installed package.
typecheck() {
  local root=build/typecheck
  rm -rf "$root" && mkdir -p "$root/pvebalance"
  for f in pvebalance/*; do ln -s "../../../$f" "$root/pvebalance/"; done
  for d in shared services; do ln -s "../../../$d" "$root/pvebalance/$d"; done
  (cd "$root" && "../../$VENV/bin/mypy" --config-file ../../pyproject.toml -p pvebalance)
}

# What the tests need beyond Python: a redis-server binary (the integration tests start their own;
# or PVEBALANCE_TEST_REDIS_URL) and Debian's Chromium (the web page's browser test drives it through
# Playwright; never `playwright install`). Installed through apt when run as root, else named.
test_needs() {
  local missing=()
  if [ -z "${PVEBALANCE_TEST_REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
  fi
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (apt-get; log: $VENV/apt.log)..." >&2
    mkdir -p "$VENV"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             "${missing[@]}"; } >"$VENV/apt.log" 2>&1; then
      tail -n 20 "$VENV/apt.log" >&2
      echo "error: apt-get could not install ${missing[*]} (log: $VENV/apt.log)" >&2
      exit 2
    fi
    return 0
  fi
  echo "error: the tests need ${missing[*]} (not root: not installing): sudo apt-get install ${missing[*]}" >&2
  exit 2
}

cmd=${1:-demo}
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/pvebalance" demo "$@" ;;
  test)  setup; test_needs; "$VENV/bin/ruff" check . && typecheck &&
         exec "$VENV/bin/python" -m pytest -q -n "${PVEBALANCE_TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder "$@" ;;
  bench) setup; exec "$VENV/bin/python" -m bench "$@" ;;
  lint)  setup; "$VENV/bin/ruff" check . && typecheck ;;
  soak)  setup
         if [ "${1:-}" = "--long" ]; then exec "$VENV/bin/python" -m bench.soak "$@"; fi  # bench/soak.py
         exec "$VENV/bin/python" -m tests.faultsuite "$@" ;;  # the fault suite: soak --seeds N
  setup) setup ;;
  needs) test_needs ;;  # only what the tests need beyond Python (.ci/run: before anything else uses apt)
  *) echo "usage: $0 demo|test|bench|soak|lint|setup|needs [ARGS]" >&2; exit 2 ;;
esac
