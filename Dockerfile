# One image for every fep-ha service; the compose service picks the program by its `command`
# (sysload, fep-acquirer, fep-forwarder, fep-api, em_daq, keepalived with deploy/keepalived/*).
FROM python:3.11-slim

# keepalived + iproute2 for the VIP container, redis-tools for its track/role scripts.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends keepalived iproute2 redis-tools \
 && rm -rf /var/lib/apt/lists/*

ENV FEPROOT=/opt/fep PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/fep

# Dependencies first (cached layer), then the one distribution `fep-ha`.
COPY pyproject.toml ./
COPY fepha ./fepha
COPY services ./services
COPY tools ./tools
RUN pip install --no-cache-dir . \
 && rm -rf build *.egg-info
COPY deploy ./deploy
COPY cfg ./cfg

RUN useradd --system --uid 1000 --home-dir /opt/fep fep \
 && mkdir -p /opt/fep/log /opt/fep/db \
 && chown -R fep:fep /opt/fep/log /opt/fep/db
# keepalived needs root (NET_ADMIN); it is started with `user: root` in compose.yml. Every FEP service runs as fep.
USER fep
CMD ["em_daq"]
