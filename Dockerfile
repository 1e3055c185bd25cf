# FlagMeter image: `flagmeter api` (default), `flagmeter worker`, `flagmeter migrate`, `flagmeter seed`.
#   docker build -t flagmeter:local .
# BASE is any Debian-based image with python3 >= 3.12 and its venv module; the tests pass a local Debian 13.
# Needs BuildKit (the default builder since Docker 23; `docker buildx` or DOCKER_BUILDKIT=1 before).
# Optional pip inputs for a network that intercepts TLS or a private index, as BuildKit secrets so they never
# land in a layer:  --secret id=pip_ca,src=/path/ca.pem  --secret id=pip_conf,src=/path/pip.conf
ARG BASE=python:3.13-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# strip(1), for the wheels' shared objects below; binutils stays in this stage.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/flagmeter
WORKDIR /src
# Runtime dependencies only (the lock also pins the test/ops/bench extras), at the lock's versions, as
# wheels (no compiler anywhere), their debug info stripped (≈ 45 % of the venv); this layer is reused until
# pyproject.toml or requirements.lock change.
COPY pyproject.toml requirements.lock ./
RUN --mount=type=secret,id=pip_ca --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      >runtime.txt \
 && /opt/flagmeter/bin/pip install --only-binary=:all: -c requirements.lock -r runtime.txt \
 && find /opt/flagmeter -name '*.so*' -type f -exec strip --strip-debug {} +
COPY README.md ./
COPY src ./src
# The package itself; its build backend (setuptools) comes from the index into an isolated build env.
RUN --mount=type=secret,id=pip_ca --mount=type=secret,id=pip_conf \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    /opt/flagmeter/bin/pip install --no-deps . \
 && /opt/flagmeter/bin/pip uninstall -y -q pip

FROM ${BASE}
# The venv links to the base's python3, so both stages use the same BASE; nothing else comes along.
RUN groupadd --system --gid 10001 flagmeter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin flagmeter
COPY --from=build /opt/flagmeter /opt/flagmeter
ENV PATH=/opt/flagmeter/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PORT=8080 \
    FLAGMETER_WORKER_METRICS_PORT=9091
USER flagmeter:flagmeter
WORKDIR /tmp
EXPOSE 8080 9091
# No curl in the image: python asks the process's own /health (the worker's metrics port when PID 1's
# command line says worker, else the API port); any error or non-2xx status fails the check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 CMD ["python3", "-c", "import os, urllib.request as r; w = b'worker' in open('/proc/1/cmdline', 'rb').read(); p = os.environ['FLAGMETER_WORKER_METRICS_PORT' if w else 'PORT']; r.urlopen(f'http://127.0.0.1:{p}/health', timeout=2)"]
ENTRYPOINT ["flagmeter"]
CMD ["api"]
