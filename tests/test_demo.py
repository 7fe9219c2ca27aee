"""The README's first command: `scripts/demo.sh` migrates a throwaway PostgreSQL to head,
with the example image under Docker (no host port), or locally on a free port."""

from __future__ import annotations

import os
import socket
import subprocess

from conftest import POSTGRES_IMAGE, PYTHON_IMAGE, ROOT

HEAD = "c3f9b7d21a58"


def demo(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scripts/demo.sh"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_demo_runs_the_example_image_against_a_postgres_container() -> None:
    result = demo(
        MIGRATOR_TEST_POSTGRES_IMAGE=POSTGRES_IMAGE, MIGRATOR_TEST_PYTHON_IMAGE=PYTHON_IMAGE
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(f"{HEAD} (head)")
    assert f"summary command=upgrade from=base to={HEAD} applied=4" in result.stderr
    assert "demo: PostgreSQL in container" in result.stderr
    # Nothing is left behind: the server and its network go with the demo.
    leftovers = subprocess.run(
        ["docker", "ps", "-a", "--filter", "name=migrator-demo-", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert leftovers.stdout == ""


def test_the_local_demo_picks_a_free_port_by_itself() -> None:
    result = demo(DEMO_MODE="local")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(f"{HEAD} (head)")
    assert "demo: PostgreSQL from /usr/lib/postgresql/" in result.stderr


def test_a_taken_port_names_the_variable_to_set() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = demo(DEMO_MODE="local", DEMO_PORT=str(port))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"demo: PostgreSQL did not start on port {port} (above); set DEMO_PORT to a free port"
    )


def test_base_images_that_cannot_be_built_fail_with_their_cause() -> None:
    """Where no registry answers and the Debian mirror cannot be reached, the run ends on
    debootstrap's own error and one line saying so, not on an unbound variable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MIGRATOR_")}
    result = subprocess.run(
        ["scripts/demo.sh"],
        cwd=ROOT,
        env={
            **env,
            "MIGRATOR_BASE_DEBIAN_IMAGE": "local/missing-debian:test",
            "MIGRATOR_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == "demo: no base images (the cause is above)"
    assert "127.0.0.1:9" in result.stderr  # debootstrap's own words about the mirror
    assert "unbound variable" not in result.stderr
