# One image for every pvebalance service: the sub-command picks it (collector, planner, migrator,
# api, and, in images built with EXTRAS=demo, simulator and demo).
#   docker build -t pvebalance .                       # production: no demo/simulator dependencies
#   docker build --build-arg EXTRAS=demo -t pvebalance .   # with the simulator (compose's demo profile)
# BASE_IMAGE: any Debian-like image with python3 (>= 3.11) and its venv module.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN python3 -m venv /venv \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in '${EXTRAS}'.split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e] if not d.startswith('pvebalance')]))" \
    > /tmp/requirements.txt \
 && /venv/bin/pip install -r /tmp/requirements.txt
COPY . .
RUN /venv/bin/pip install --no-deps . && /venv/bin/pvebalance --help >/dev/null

FROM ${BASE_IMAGE}
# tini as PID 1: forwards SIGTERM to the service and reaps the migrator's work-horses.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --gid 0 --no-create-home --home-dir /tmp pvebalance
COPY --from=build /venv /venv
# Read-only root file system: nothing is written but under /tmp (mount a tmpfs or emptyDir there),
# which is also the working directory, so relative paths (the simulator's certificate folder) land there.
ENV PATH=/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp TMPDIR=/tmp
WORKDIR /tmp
USER 10001
# The service to check is read off the running command (pvebalance health SERVICE names it).
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 CMD ["pvebalance", "health"]
ENTRYPOINT ["tini", "--", "pvebalance"]
CMD ["--help"]
