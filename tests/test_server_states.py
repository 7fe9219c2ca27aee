"""A server that is up but not yet accepting connections (SQLSTATE 57P03) is waited for.

This needs a server we can hold in that state and then release: the local PostgreSQL server
binaries run a standby with hot standby off (it refuses every connection with "the database
system is not accepting connections") until `pg_ctl promote` makes it a primary.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PROJECTS, free_port, run_migrator


def server_binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries are missing: scripts/test.sh installs them"
    return Path(found[-1]).parent


def as_server_user(*command: str | Path) -> list[str]:
    # PostgreSQL refuses to run as root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return [*prefix, *map(str, command)]


@pytest.fixture(params=["off"])
def standby(request: pytest.FixtureRequest) -> Iterator[tuple[int, Path, Path]]:
    """A server in recovery with no primary; with hot_standby on (`params`), it takes
    read-only connections, as a standby does during a failover."""
    binaries = server_binaries()
    directory = Path(tempfile.mkdtemp(prefix="migrator-standby-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    subprocess.run(
        as_server_user(binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust"),
        check=True,
        capture_output=True,
    )
    signal_file = data / "standby.signal"
    signal_file.touch()
    if os.geteuid() == 0:
        shutil.chown(signal_file, "postgres")
    port = free_port()
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c hot_standby={request.param}"
    )
    subprocess.run(
        as_server_user(
            binaries / "pg_ctl", "-D", data, "-o", options, "-l", directory / "log", "-w", "start"
        ),
        check=True,
        capture_output=True,
    )
    yield port, binaries, data
    subprocess.run(
        as_server_user(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"),
        capture_output=True,
    )
    shutil.rmtree(directory, ignore_errors=True)


def test_a_server_not_yet_accepting_connections_is_waited_for(
    standby: tuple[int, Path, Path],
) -> None:
    port, binaries, data = standby
    promote = threading.Timer(
        2.0,
        lambda: subprocess.run(
            as_server_user(binaries / "pg_ctl", "-D", data, "-w", "promote"), capture_output=True
        ),
    )
    promote.start()
    try:
        result = run_migrator(
            "wait",
            env={
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres",
                "MIGRATOR_WAIT_TIMEOUT": "30",
            },
        )
    finally:
        promote.join()

    assert result.status == 0, result.output
    assert "the database system is not accepting connections" in result.stderr
    assert result.seconds >= 1.5


def test_a_server_that_never_accepts_gives_exit_3_naming_why(
    standby: tuple[int, Path, Path],
) -> None:
    port, _, _ = standby
    result = run_migrator(
        "wait",
        env={
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres",
            "MIGRATOR_WAIT_TIMEOUT": "1",
        },
    )

    assert result.status == 3
    assert "not reachable within 1 s (MIGRATOR_WAIT_TIMEOUT)" in result.stderr
    assert "not accepting connections" in result.stderr


@pytest.mark.parametrize("standby", ["on"], indirect=True)
def test_a_read_only_standby_is_waited_for_until_it_is_promoted(
    standby: tuple[int, Path, Path],
) -> None:
    port, binaries, data = standby
    env = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres",
        "MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini"),
    }
    current = run_migrator("current", env=env)  # read-only commands run on a standby
    refused = run_migrator("upgrade", "head", env={**env, "MIGRATOR_WAIT_TIMEOUT": "1"})
    promote = threading.Timer(
        2.0,
        lambda: subprocess.run(
            as_server_user(binaries / "pg_ctl", "-D", data, "-w", "promote"), capture_output=True
        ),
    )
    promote.start()
    try:
        promoted = run_migrator("upgrade", "head", env={**env, "MIGRATOR_WAIT_TIMEOUT": "30"})
    finally:
        promote.join()

    assert current.status == 0 and current.stdout.startswith("base"), current.output
    assert refused.status == 3, refused.output
    assert "read-only: in recovery" in refused.stderr
    assert "migration lock" not in refused.stderr
    assert promoted.status == 0, promoted.output
    assert "waiting for the database" in promoted.stderr and "applied=3" in promoted.stderr
