# The migrator image: `docker run migrator upgrade head` on a project built into an image
# FROM it (or mounted, with MIGRATOR_CONFIG). It carries no migrations of its own: without a
# project it exits 2 and says how to give it one, so it can never apply an example to a
# real database. The base is a build argument so that an air-gapped site can name its own
# (scripts/build-base-images.sh builds one from Debian packages).
#
#   docker build -t migrator .                                   the released image
#   docker build --target example -t migrator-example .          the example application
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

FROM ${PYTHON_IMAGE} AS migrator
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
# Where a project goes: COPY it here in an image FROM this one, or mount it here.
WORKDIR /project
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MIGRATOR_CONFIG=/project/alembic.ini
# A fixed numeric user, group 0: also runs under any UID with group 0 (OpenShift).
USER 10001:0
ENTRYPOINT ["migrator"]
CMD ["upgrade", "head"]

# The example application (alembic.ini, alembic/, persistence/), built FROM the migrator
# exactly as a team builds its own: compose, the demo and the tests run this one.
FROM migrator AS example
# With the manifest `migrator verify` leaves beside alembic.ini where it runs (CI, before
# this build), when there is one: each revision's measured effects, weighed at every deploy.
COPY alembic.ini migrator-manifest.jso[n] /project/
COPY alembic/ /project/alembic/
COPY persistence/ /project/persistence/
# Compiled now, so a read-only root filesystem costs nothing at start (as root: the
# copied files belong to root; the migrator only reads them); and the manifest that
# answers a no-op deploy without importing SQLAlchemy or Alembic (keeping the effects).
USER 0
RUN python3 -m compileall -q /project && migrator manifest
USER 10001:0

# The default target: the released image, without the example.
FROM migrator
