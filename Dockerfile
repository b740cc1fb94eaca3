# The runner on a minimal Debian 13 base, built from pinned inputs only:
# - the bases are made from Debian packages of one snapshot.debian.org date by
#   deploy/image/build-base.sh (reproducible with SOURCE_DATE_EPOCH); any other
#   Debian 13 image with /usr/bin/python3 works: --build-arg BASE=... BUILD_BASE=...
#   (docs/operations.md, "Docker", says what that changes);
# - the run-time dependencies come from deploy/requirements.lock, hash-checked.
# The runtime image gets the virtual environment and nothing else: no pip,
# setuptools, compiler or apt.
#   deploy/image/build-base.sh
#   docker build --network host -t apisix-python-runner:0.1.0 .
#   docker run -d --read-only -v a6:/run/a6 apisix-python-runner:0.1.0
ARG BASE=apisix-python-runner-base:trixie-20261201
ARG BUILD_BASE=apisix-python-runner-build:trixie-20261201

FROM ${BUILD_BASE} AS build
# A PyPI mirror, if PyPI itself is out of reach (e.g. http://127.0.0.1:8000/simple
# with --network host): safe, because every file is checked against the lock's hashes.
ARG PIP_INDEX_URL
WORKDIR /src
COPY deploy/requirements.lock ./
# No build isolation: a6pluginprotos (sdist-only) is built with the base's pinned
# setuptools instead of whatever PyPI serves that day.
RUN python3 -m pip wheel --no-cache-dir --no-deps --no-build-isolation --require-hashes \
        -r requirements.lock -w /wheels
COPY pyproject.toml README.md ./
COPY runner ./runner
RUN python3 -m pip wheel --no-cache-dir --no-deps --no-build-isolation . -w /wheels \
 && python3 -m venv --without-pip /opt/apisix-runner \
 && python3 -m pip --python /opt/apisix-runner/bin/python install --no-cache-dir --no-index --no-deps /wheels/*.whl \
 && /opt/apisix-runner/bin/python -m compileall -q /opt/apisix-runner/lib

FROM ${BASE}
COPY --from=build /opt/apisix-runner /opt/apisix-runner
COPY plugins /etc/apisix-runner/plugins
# COPY keeps the build context's modes, and a checkout made with umask 002 has
# group-writable files, which the runner refuses to import (unless the root is
# read-only). Root-owned, writable by root only, whatever the checkout.
RUN ["/usr/bin/chmod", "-R", "u=rwX,go=rX", "/etc/apisix-runner/plugins"]
# The socket directory, shared with APISIX. Owned by the runner's uid: a new
# named or anonymous volume copies this owner. A tmpfs or a bind mount must be
# given that owner too (docs/operations.md, "Docker: the socket directory").
RUN ["/usr/bin/install", "-d", "-o", "65532", "-g", "65532", "-m", "0755", "/run/a6"]
USER 65532:65532
# Settings as environment, not only in CMD, so that `docker run IMAGE check`
# and `docker exec C apisix-python-runner health` find the same socket and plugins.
# Nothing is written to the root filesystem: it runs with --read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APISIX_LISTEN_ADDRESS=unix:/run/a6/runner.sock \
    A6_RUNNER_PLUGINS=/etc/apisix-runner/plugins
VOLUME ["/run/a6"]
# Exec form: the runner is PID 1 and handles SIGTERM (drain, remove the socket) itself.
ENTRYPOINT ["/opt/apisix-runner/bin/apisix-python-runner"]
CMD ["run"]
# --pid 1: probe the socket the runner (PID 1) serves, also when it was given
# --socket; the start period covers plugin imports.
HEALTHCHECK --start-period=10s --interval=15s --timeout=3s --retries=3 \
    CMD ["/opt/apisix-runner/bin/apisix-python-runner", "health", "--pid", "1"]
