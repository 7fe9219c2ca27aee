"""The container image, built and run with a real Docker engine against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    PASSWORD,
    POSTGRES_IMAGE,
    PROJECTS,
    ROLE,
    ROOT,
    Database,
    Result,
    Server,
    assert_no_password,
    docker_build,
)

HEAD = "c3f9b7d21a58"


@pytest.fixture(scope="module")
def network(server: Server) -> Iterator[str]:
    """A user-defined Docker network on which the test server answers as `db`."""
    name = f"migrator-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)
    subprocess.run(
        ["docker", "network", "connect", "--alias", "db", name, server.container_id],
        check=True,
        capture_output=True,
    )
    yield name
    subprocess.run(
        ["docker", "network", "disconnect", name, server.container_id], capture_output=True
    )
    subprocess.run(["docker", "network", "rm", name], capture_output=True)


def container_env(database: Database) -> dict[str, str]:
    return {
        "DB_HOST": "db",
        "DB_PORT": "5432",
        "DB_NAME": database.name,
        "DB_USER": ROLE,
        "DB_PASSWORD": PASSWORD,
    }


def docker_run(
    image: str, network: str, env: Mapping[str, str], *args: str, options: tuple[str, ...] = ()
) -> Result:
    """`docker run` as a user types it; values pass by name (`-e KEY`), not on the command line."""
    names = [item for key in env for item in ("-e", key)]
    started = time.monotonic()
    process = subprocess.run(
        ["docker", "run", "--rm", "--network", network, *names, *options, image, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = Result(process.returncode, process.stdout, process.stderr, time.monotonic() - started)
    assert_no_password(result.output)
    return result


def schema(database: Database) -> list[tuple[str, ...]]:
    """Tables, columns, indexes and constraints: what a round trip must give back."""
    columns = database.query(
        "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')"
        " FROM information_schema.columns WHERE table_schema = 'public'"
    )
    indexes = database.query(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    constraints = database.query(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = 'public'::regnamespace"
    )
    return sorted(tuple(str(value) for value in row) for row in [*columns, *indexes, *constraints])


def test_upgrade_downgrade_upgrade_round_trip(
    example_image: str, network: str, database: Database
) -> None:
    env = container_env(database)

    upgraded = docker_run(example_image, network, env)  # CMD: upgrade head
    current = docker_run(example_image, network, env, "current")
    first = schema(database)
    # As a Kubernetes Job does: the environment decides, so no arguments (not even the CMD).
    downgrade_env = {
        **env,
        "MIGRATOR_COMMAND": "downgrade",
        "MIGRATOR_TARGET": "base",
        "MIGRATOR_ALLOW_DOWNGRADE": "true",
    }
    refused = docker_run(example_image, network, downgrade_env)
    downgraded = docker_run(
        example_image, network, downgrade_env, options=("--entrypoint", "migrator")
    )
    tables_at_base = database.tables()
    again = docker_run(example_image, network, env, "upgrade", "head")

    assert upgraded.status == 0, upgraded.output
    assert "applied=4" in upgraded.stderr
    assert current.stdout.strip() == f"{HEAD} (head)"
    assert refused.status == 2  # the CMD says upgrade head, the environment downgrade
    assert "MIGRATOR_COMMAND=downgrade disagrees with the arguments (upgrade)" in refused.stderr
    assert downgraded.status == 0, downgraded.output
    assert tables_at_base == {"alembic_version", "migrator_ledger"}
    assert again.status == 0, again.output
    assert schema(database) == first
    assert any("ix_cars_model" in row for row in first)


def test_read_only_unprivileged_and_arbitrary_uid(
    example_image: str, network: str, database: Database
) -> None:
    env = container_env(database)

    hardened = docker_run(
        example_image,
        network,
        env,
        options=("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
    )
    openshift = docker_run(
        example_image, network, env, "current", options=("--read-only", "--user", "12345:0")
    )

    # The manifest is written where the project is built; on a read-only root, one line.
    manifest = docker_run(example_image, network, {}, "manifest", options=("--read-only",))

    assert hardened.status == 0, hardened.output
    assert openshift.status == 0, openshift.output
    assert openshift.stdout.strip() == f"{HEAD} (head)"
    assert manifest.status == 2, manifest.output
    assert manifest.stderr.count("ERROR") == 1 and "Traceback" not in manifest.output
    assert (
        "/project/migrator-manifest.json: cannot write the manifest (Read-only file system): "
        "run `migrator manifest` where the project is built" in manifest.stderr
    )


@pytest.fixture
def tenants(server: Server) -> Iterator[list[Database]]:
    """Three empty tenant databases owned by ROLE."""
    prefix = f"tenant_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{letter}" for letter in "abc"]
    with server.admin.connect() as connection:
        for name in names:
            connection.execute(sa.text(f"CREATE DATABASE {name} OWNER {ROLE}"))
    yield [Database(server, name) for name in names]
    with server.admin.connect() as connection:
        for name in names:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def test_fleet_on_a_read_only_root_needs_a_writable_tmp_and_says_so(
    example_image: str, network: str, database: Database, tenants: list[Database], tmp_path: Path
) -> None:
    """`fleet upgrade` in the hardened container of the README: without a writable /tmp (its
    process server's socket lives there) it refuses in one line, exit 2, before any target
    is touched; with a tmpfs at /tmp (what the chart's emptyDir is) every target reaches
    head: three tenant databases and a schema of the configured database."""
    schema = f"tenant_s_{uuid.uuid4().hex[:6]}"
    database.query(f"CREATE SCHEMA {schema}")
    targets = tmp_path / "targets"
    targets.write_text("".join(f"{t.name}\n" for t in tenants) + f"schema={schema}\n")
    targets.chmod(0o644)
    env = {**container_env(database), "MIGRATOR_FLEET_FILE": "/etc/migrator/targets"}
    hardened = (
        *("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
        *("-v", f"{targets}:/etc/migrator/targets:ro"),
    )

    refused = docker_run(example_image, network, env, "fleet", "upgrade", "head", options=hardened)
    untouched = [tenant.revision() for tenant in tenants]
    upgraded = docker_run(
        example_image,
        network,
        env,
        "fleet",
        "upgrade",
        "head",
        options=(*hardened, "--tmpfs", "/tmp"),
    )

    assert refused.status == 2, refused.output
    (error,) = [line for line in refused.stderr.splitlines() if " ERROR " in line]
    assert "writable temporary directory" in error and "--tmpfs /tmp" in error, error
    assert "unexpected" not in refused.output and "Traceback" not in refused.output
    assert untouched == [None, None, None]
    assert upgraded.status == 0, upgraded.output
    assert "targets=4 ok=4 failed=0 skipped=0" in upgraded.stderr
    assert [tenant.revision() for tenant in tenants] == [HEAD] * 3
    assert database.query(f"SELECT version_num FROM {schema}.alembic_version") == [(HEAD,)]
    assert database.tables() == set()  # the configured database's own schema is not a target


def test_docker_stop_rolls_back_the_revision_in_flight(
    migrator_image: str, network: str, database: Database
) -> None:
    name = f"migrator-stop-{uuid.uuid4().hex[:8]}"
    env = {
        **container_env(database),
        "MIGRATOR_CONFIG": "/project/alembic.ini",
        "SAMPLE_SLEEP": "60",
        "MIGRATOR_SAFETY": "off",  # the slow revision would first run on a scratch database
    }
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            *[item for key in env for item in ("-e", key)],
            "-v",
            f"{PROJECTS / 'audited'}:/project:ro",
            migrator_image,
        ],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "[1/3] a1a1a1a1a1a1" not in logs(name):
            assert time.monotonic() < deadline, logs(name)
            time.sleep(0.2)
        time.sleep(0.5)  # revision a2 is inside pg_sleep now
        stopped = time.monotonic()
        subprocess.run(["docker", "stop", "--time", "20", name], check=True, capture_output=True)
        seconds = time.monotonic() - stopped
        status = int(
            subprocess.run(
                ["docker", "wait", name], capture_output=True, text=True, check=True
            ).stdout
        )
        output = logs(name)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)

    assert status == 143, output
    assert seconds < 10  # the migrator itself stopped, not docker's kill after the grace period
    assert "interrupted by SIGTERM; [2/3] a2a2a2a2a2a2 (slow revision) rolled back" in output
    assert database.revision() == "a1a1a1a1a1a1"
    assert "slow_done" not in database.tables()
    assert database.advisory_locks() == 0


def logs(container: str) -> str:
    process = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    assert_no_password(process.stdout + process.stderr)
    return process.stdout + process.stderr


def test_password_from_a_mounted_file(
    example_image: str, network: str, database: Database, tmp_path: Path
) -> None:
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o644)
    env = {
        **container_env(database),
        "DB_PASSWORD": "",
        "DB_PASSWORD_FILE": "/run/secrets/db-password",
    }

    result = docker_run(
        example_image,
        network,
        env,
        options=("--read-only", "-v", f"{secret}:/run/secrets/db-password:ro"),
    )

    assert result.status == 0, result.output
    assert database.revision() == HEAD


def test_image_holds_only_what_runs(migrator_image: str, example_image: str) -> None:
    probe = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            migrator_image,
            "-c",
            "for tool in pip pip3 gcc cc make; do command -v $tool; done;"
            "python3 -m pip --version 2>/dev/null; ls /opt/venv/bin; ls -A / /project",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    example = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "ls", example_image, "/project"],
        capture_output=True,
        text=True,
        check=True,
    )
    config = json.loads(
        subprocess.run(
            ["docker", "inspect", migrator_image], capture_output=True, text=True, check=True
        ).stdout
    )[0]

    present = probe.stdout.split()
    assert not {"pip", "pip3", "gcc", "cc", "make"} & {Path(item).name for item in present}
    assert "tests" not in present and ".git" not in present and "pyproject.toml" not in present
    # The released image has the tool and no migrations: /project is empty, /app gone.
    assert "migrator" in present
    assert probe.stdout.rstrip().endswith("/project:")
    assert "app" not in probe.stdout.split("/:")[1].split()
    # The example application is its own image, FROM the migrator.
    assert set(example.stdout.split()) == {
        "alembic",
        "alembic.ini",
        "persistence",
        "migrator-manifest.json",  # written at build time: fast no-op deploys
    }
    assert config["Config"]["User"] == "10001:0"
    assert config["Config"]["Entrypoint"] == ["migrator"]
    assert config["Config"]["Cmd"] == ["upgrade", "head"]
    assert "MIGRATOR_CONFIG=/project/alembic.ini" in config["Config"]["Env"]
    labels = config["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert {"org.opencontainers.image.source", "org.opencontainers.image.licenses"} <= set(labels)


def test_without_a_project_the_image_refuses_in_one_line(
    migrator_image: str, network: str, database: Database
) -> None:
    """The released image never applies migrations it was not given: with a database, and
    with the CMD `upgrade head`, it exits 2 before connecting, naming where a project goes."""
    result = docker_run(migrator_image, network, container_env(database))

    assert result.status == 2, result.output
    (line,) = result.stderr.splitlines()
    assert "MIGRATOR_CONFIG" in line and "/project/alembic.ini" in line
    assert line.endswith(
        "build an image FROM the migrator with yours in /project, or mount one there"
    )
    assert result.stdout == ""
    assert database.tables() == set()


def test_a_team_image_built_from_the_migrator(
    migrator_image: str, network: str, database: Database, tmp_path: Path
) -> None:
    """`FROM migrator` + the team's own Alembic project, as the README shows."""
    shutil.copytree(PROJECTS / "audited", tmp_path / "project")
    (tmp_path / "Dockerfile").write_text(
        "ARG MIGRATOR_IMAGE=migrator\n"
        "FROM ${MIGRATOR_IMAGE}\n"
        "COPY project/ /project/\n"
        "ENV MIGRATOR_CONFIG=/project/alembic.ini\n"
    )
    docker_build("migrator-team:test", tmp_path, f"MIGRATOR_IMAGE={migrator_image}")

    result = docker_run("migrator-team:test", network, container_env(database))

    assert result.status == 0, result.output
    assert database.revision() == "a3a3a3a3a3a3"
    assert database.tables() == {
        "alembic_version",
        "migrator_ledger",
        "applied",
        "slow_done",
        "third",
    }


def test_compose_up_migrates_a_fresh_database(example_image: str) -> None:
    """The README's command: compose runs the example image against PostgreSQL and exits
    with the migrator's status (postgres would otherwise keep `up` attached forever)."""
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    project = f"migrator-compose-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "EXAMPLE_IMAGE": example_image, "POSTGRES_IMAGE": POSTGRES_IMAGE}
    command = [*compose, "-p", project, "-f", str(ROOT / "compose.yaml")]
    try:
        up = subprocess.run(
            [*command, "up", "--abort-on-container-exit", "--exit-code-from", "migrator"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run([*command, "down", "-v"], env=env, capture_output=True)

    assert up.returncode == 0, up.stdout + up.stderr
    assert "summary command=upgrade from=base to=c3f9b7d21a58 applied=4" in up.stdout + up.stderr
    assert "app-password" not in up.stdout + up.stderr
