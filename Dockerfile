# One image for every fep-ha service; the compose service picks the program by its `command`
# (sysload, fep-acquirer, fep-forwarder, fep-api, em_daq, keepalived with deploy/keepalived/*).
# Product code only: fepha/ and services/ installed into a venv (/opt/venv). The dev tools (tools/: PLC
# simulator, reference SCADA master with c104, sefeps client, demo) are a separate distribution and not here.
#   docker compose build                                   (on python:3.11-slim)
#   podman build --build-arg BASE=localhost/fepha-base:... (tests/containers: a debootstrap bookworm base)
ARG BASE=python:3.11-slim
FROM ${BASE}
# A CA bundle for pip where TLS is intercepted (tests pass the host's, mounted read-only at build time).
ARG PIP_CERT=

# keepalived + iproute2 for the VIP container, redis-tools for its track/role scripts.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends keepalived iproute2 redis-tools \
 && rm -rf /var/lib/apt/lists/*

ENV FEPROOT=/opt/fep PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
WORKDIR /opt/fep

# The one distribution `fep-ha`, built from a copy of its sources outside FEPROOT and removed after.
COPY pyproject.toml /tmp/src/
COPY fepha /tmp/src/fepha
COPY services /tmp/src/services
RUN python3 -m venv /opt/venv \
 && PIP_CERT=${PIP_CERT} /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /tmp/src \
 && rm -rf /tmp/src
COPY deploy ./deploy
COPY cfg ./cfg

RUN useradd --system --uid 1000 --home-dir /opt/fep fep \
 && mkdir -p /opt/fep/log /opt/fep/db \
 && chown -R fep:fep /opt/fep/log /opt/fep/db
# keepalived needs root (NET_ADMIN); it is started with `user: root` in compose.yml. Every FEP service runs as fep.
USER fep
CMD ["em_daq"]
