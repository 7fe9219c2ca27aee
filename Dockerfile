# The migrator image: `docker run migrator upgrade head`.
# The base is a build argument so that an air-gapped site can name its own
# (scripts/build-base-images.sh builds one from Debian packages).
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/venv
# Locked, hash-checked runtime dependencies first: this layer changes only with the lock.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY migrator/ migrator/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip uninstall --yes --quiet pip \
    && python3 -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="migrator" \
      org.opencontainers.image.description="Wait for PostgreSQL, take a migration lock, run Alembic to a target revision." \
      org.opencontainers.image.source="https://github.com/migrator/migrator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
# The runtime installs nothing: drop the installer some base images ship.
RUN python3 -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null; \
    rm -f /usr/local/bin/pip /usr/local/bin/pip3*
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY alembic/ alembic/
COPY persistence/ persistence/
# Compiled now, so a read-only root filesystem costs nothing at start.
RUN python3 -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MIGRATOR_CONFIG=/app/alembic.ini
# A fixed numeric user, group 0: also runs under any UID with group 0 (OpenShift).
USER 10001:0
ENTRYPOINT ["migrator"]
CMD ["upgrade", "head"]
