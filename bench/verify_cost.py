"""What `migrator verify` costs beside plain Alembic on the same 200-revision project.

    .venv/bin/python bench/verify_cost.py [--revisions 200] [--runs 3]

The project is bench/chain.py's (create table, add column, index, check constraint, data
update, rename), in a temporary directory; the server is bench/server.py's throwaway
PostgreSQL on loopback. Plain is `alembic upgrade head` then `alembic downgrade base`, the
steps verify takes at the least; runs take turns, after one unmeasured warm-up of each.
Prints the median of each and their ratio (the target: at most 3x). Both are run as a user
runs them, whole processes through their command lines, timed from outside.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chain
from server import Server

BIN = Path(sys.executable).parent
# The tools run as a user runs them: none of this shell's database settings.
ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith(("DB_", "DATABASE_", "MIGRATOR_", "PG"))
}


def seconds(arguments: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one whole process, which must succeed."""
    started = time.perf_counter()
    finished = subprocess.run(arguments, env={**ENV, **(env or {})}, capture_output=True, text=True)
    took = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"bench: {' '.join(arguments)} exited {finished.returncode}:\n"
                         f"{finished.stdout}{finished.stderr}")  # fmt: skip
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="migrator-verify-cost-"))
    server = Server()
    try:
        ini, _ = chain.write_projects(work / "project", chain.chain(args.revisions))
        plain_ini = ini.with_name("alembic-plain.ini")
        url = server.fresh_database("plain")
        chain.write_url(ini, plain_ini, url.replace("postgresql://", "postgresql+psycopg2://"))
        alembic = [str(BIN / "alembic"), "-c", str(plain_ini)]
        migrator_env = {"DATABASE_URL": server.url("postgres"), "MIGRATOR_CONFIG": str(ini)}

        def plain() -> float:
            return seconds([*alembic, "upgrade", "head"]) + seconds([*alembic, "downgrade", "base"])

        def verify() -> float:
            return seconds([str(BIN / "migrator"), "verify"], migrator_env)

        times: dict[str, list[float]] = {"plain": [], "verify": []}
        for turn in range(args.runs + 1):  # turn 0 warms the page cache, unmeasured
            for name, timed in (("plain", plain), ("verify", verify)):
                took = timed()
                if turn:
                    times[name].append(took)
        plain_s, verify_s = (statistics.median(times[name]) for name in ("plain", "verify"))
        print(f"{args.revisions} revisions, median of {args.runs} runs (all: {times})")
        print(f"alembic upgrade head + downgrade base: {plain_s:.2f} s")
        print(f"migrator verify: {verify_s:.2f} s")
        print(f"ratio: {verify_s / plain_s:.2f}x (target <= 3x)")
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
