# The GitHub container action (action.yml's runs.image): the migrator built from this
# repository's own sources at the commit a workflow pins (`uses: migrator/migrator@<sha>`),
# so the action needs no published image and works before a release as after it. GitHub
# builds it as `docker build -f action.Dockerfile <its directory>`: this file sits at the
# root so that the context is the repository (action/Dockerfile's context would be action/
# alone). Its `build` stage is the root Dockerfile's, line for line (a test compares them).
#
#   docker build -f action.Dockerfile -t migrator-action .
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

# Run as root (GitHub's default user for a container action: the runner mounts the
# workspace and the GITHUB_OUTPUT file owned by its own user); no USER, no WORKDIR (the
# runner sets the workspace as the working directory).
FROM ${PYTHON_IMAGE}
# As in the migrator image: the runtime installs nothing.
RUN python3 -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null; \
    rm -f /usr/local/bin/pip /usr/local/bin/pip3*
COPY --from=build /opt/venv /opt/venv
COPY action/entrypoint.py /action/entrypoint.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["python3", "/action/entrypoint.py"]
