"""The README's first command: `scripts/demo.sh` migrates a throwaway PostgreSQL to head."""

from __future__ import annotations

import os
import subprocess

from conftest import POSTGRES_IMAGE, ROOT, free_port


def test_the_demo_migrates_a_throwaway_database_to_head() -> None:
    env = {
        **os.environ,
        "DEMO_PORT": str(free_port()),
        "MIGRATOR_TEST_POSTGRES_IMAGE": POSTGRES_IMAGE,
    }

    result = subprocess.run(
        ["scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("c3f9b7d21a58 (head)")
    assert "summary command=upgrade from=base to=c3f9b7d21a58 applied=4" in result.stderr
    assert "demo: PostgreSQL in container" in result.stderr
