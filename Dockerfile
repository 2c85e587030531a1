# syntax=docker/dockerfile:1
# pdp: the policy decision point server. Two stages: wheels are built in the first, the second
# only installs them. No key, certificate or config is baked in; mount them at run time:
#
#   docker run --read-only --tmpfs /tmp \
#       -v /srv/pdp/etc:/etc/pdp:ro -v pdp-data:/var/lib/pdp \
#       -p 7443:7443 -p 127.0.0.1:7444:7444 pdp:0.1.0
#
# /etc/pdp/pdp.toml is the config (see examples/pdp.toml), with the PKI and the trusted bundle
# keys beside it; /var/lib/pdp is the only writable path (store, audit trail, token keys).

FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A C compiler for the C modules (setup.py: the request decoder and answer encoder, the
# JSON loader hook, the cache doorkeeper), in this stage only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY clients/python/pyproject.toml clients/python/README.md clients/python/
COPY clients/python/pdp_client clients/python/pdp_client
COPY pyproject.toml setup.py README.md ./
COPY pdp pdp
# The client is named by path on the same command line, so "pdp-client" is resolved to it and
# never to a same-named package from an index (dependency confusion).
RUN python -m pip wheel --wheel-dir /wheels ./clients/python .

FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="pdp" \
      org.opencontainers.image.description="zero-trust policy decision point (gRPC, mTLS 1.3)" \
      org.opencontainers.image.licenses="Apache-2.0"
# No bytecode written at run time: the root file system is read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/var/lib/pdp
RUN groupadd --system --gid 10001 pdp \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pdp --no-create-home \
       --shell /usr/sbin/nologin pdp
# Only the wheels built above, no index: what was built is what runs (so no version pins).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels pdp pdp-client \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/pdp \
    && install -d -o root -g root -m 0755 /etc/pdp
VOLUME ["/var/lib/pdp"]
WORKDIR /var/lib/pdp
USER 10001:10001
EXPOSE 7443 7444
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["pdp", "health", "--config", "/etc/pdp/pdp.toml", "--timeout", "3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pdp"]
CMD ["serve", "--config", "/etc/pdp/pdp.toml"]
