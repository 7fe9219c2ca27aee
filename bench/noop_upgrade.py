"""How long a no-op `upgrade head` takes: `migrator` beside plain `alembic`, same database.

Usage: with DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD set (the database is migrated
to head first), from the repository root:

    .venv/bin/python bench/noop_upgrade.py [RUNS]

Prints min / median / max wall-clock seconds of whole processes, as a deploy sees them.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(command: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    missing = [name for name in ("DB_HOST", "DB_NAME", "DB_USER") if not os.environ.get(name)]
    if missing:
        sys.exit(f"set {', '.join(missing)} (and DB_PORT, DB_PASSWORD) first")
    subprocess.run([BIN / "migrator", "upgrade", "head"], cwd=ROOT, check=True, capture_output=True)
    commands = {
        "migrator upgrade head": [str(BIN / "migrator"), "upgrade", "head"],
        "alembic upgrade head": [str(BIN / "alembic"), "upgrade", "head"],
    }
    print(f"no-op upgrade head, {runs} runs each (seconds)")
    for name, command in commands.items():
        timed(command, 2)  # warm the page cache
        seconds = timed(command, runs)
        print(
            f"  {name:24} min {min(seconds):.3f}  median {statistics.median(seconds):.3f}"
            f"  max {max(seconds):.3f}"
        )


if __name__ == "__main__":
    main()
