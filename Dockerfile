# Multi-stage: build the virtual environment (a6pluginprotos is sdist-only and
# needs setuptools), then copy only the venv into a slim, non-root runtime.
#   docker build -t apisix-python-runner .
#   docker run --read-only -v a6:/run/a6 -v $PWD/plugins:/etc/apisix-runner/plugins:ro apisix-python-runner
FROM python:3.13-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner ./runner
RUN python -m venv /opt/apisix-runner \
 && /opt/apisix-runner/bin/pip install --no-cache-dir . \
 && /opt/apisix-runner/bin/python -m compileall -q /opt/apisix-runner

FROM python:3.13-slim
COPY --from=build /opt/apisix-runner /opt/apisix-runner
COPY plugins /etc/apisix-runner/plugins
# The socket lives on a volume shared with APISIX; the image's copy of the
# directory gives a fresh named volume the right owner.
RUN mkdir -p /run/a6 && chown 65532:65532 /run/a6
USER 65532:65532
# Nothing is written to the root filesystem: it can run with --read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APISIX_LISTEN_ADDRESS=unix:/run/a6/runner.sock
VOLUME ["/run/a6"]
# Exec form: the runner is PID 1 and gets SIGTERM itself (it installs a handler).
ENTRYPOINT ["/opt/apisix-runner/bin/apisix-python-runner"]
CMD ["run", "--plugins", "/etc/apisix-runner/plugins"]
HEALTHCHECK --interval=15s --timeout=3s CMD ["/opt/apisix-runner/bin/apisix-python-runner", "health"]
