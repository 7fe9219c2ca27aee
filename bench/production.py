"""Production conditions, timed: how soon a run that lost its lock exits, how soon SIGTERM
ends a run on a stalled network, how long 30 runs take on 40 connection slots, and how many
connections a run opens. One small function per figure; run.py prints them (part
`conditions`). The stall uses the tests' proxy (tests/conditions.py): packets dropped by
iptables on loopback, no reset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conditions import Proxy
from server import Server

ROOT = Path(__file__).resolve().parent.parent
AUDITED = ROOT / "tests" / "projects" / "audited" / "alembic.ini"
OWN_CONNECTION = ROOT / "tests" / "projects" / "own_connection" / "alembic.ini"
LOCK_PID = """
    SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
    AND objid = %s AND classid = %s
"""
LOCK_KEY = int.from_bytes(b"migrator", "big")


def start(url: str, ini: Path, *arguments: str, **env: str) -> subprocess.Popen[str]:
    """The migrator, as a deploy runs it, with its log readable line by line."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "MIGRATOR_"))},
        "DATABASE_URL": url,
        "MIGRATOR_CONFIG": str(ini),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *arguments],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(process: subprocess.Popen[str], fragment: str) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        if fragment in line:
            return
    raise SystemExit(f"bench: the migrator ended before logging {fragment!r}")


def finish(process: subprocess.Popen[str], expected: int) -> None:
    _, errors = process.communicate(timeout=120)
    if process.returncode != expected:
        raise SystemExit(f"bench: exit {process.returncode}, not {expected}:\n{errors}")


def lost_lock_to_exit(server: Server, ini: Path) -> float:
    """Seconds from pg_terminate_backend of the lock's session to the run's exit (7)."""
    url = server.fresh_database("lost_lock")
    run = start(url, ini, "upgrade", "head", SAMPLE_SLEEP="60")
    read_until(run, "applied in")
    admin = server.connect("lost_lock")
    with admin.cursor() as cursor:
        cursor.execute(LOCK_PID, (LOCK_KEY & 0xFFFFFFFF, LOCK_KEY >> 32))
        (pid,) = cursor.fetchone()
        terminated = time.perf_counter()
        cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()
    finish(run, 7)
    return time.perf_counter() - terminated


def sigterm_to_exit_when_stalled(server: Server) -> float:
    """Seconds from SIGTERM to exit (143) while the network drops every packet."""
    server.fresh_database("stalled")
    proxy = Proxy(None, ("127.0.0.1", server.port))
    try:
        url = f"postgresql://bench@127.0.0.1:{proxy.port}/stalled"
        run = start(url, AUDITED, "upgrade", "head", SAMPLE_SLEEP="60")
        read_until(run, "applied in")
        proxy.stall()
        signalled = time.perf_counter()
        run.send_signal(signal.SIGTERM)
        finish(run, 143)
        return time.perf_counter() - signalled
    finally:
        proxy.close()


def thirty_runs_on_forty_slots(small: Server) -> float:
    """Wall seconds for 30 runs started together on an empty database, max_connections=40."""
    url = small.fresh_database("thirty")
    started = time.perf_counter()
    runs = [start(url, AUDITED, "upgrade", "head") for _ in range(30)]
    for run in runs:
        finish(run, 0)
    return time.perf_counter() - started


def waiting_runs_cost(server: Server, waiters: int = 30, seconds: float = 10.0) -> dict[str, float]:
    """What `waiters` runs waiting for the migration lock cost the server: new connections
    per second (pg_stat_database.sessions) and the most of their sessions open at once."""
    url = server.fresh_database("waiting")
    holder = server.connect("waiting")
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    runs = [start(url, AUDITED, "upgrade", "head") for _ in range(waiters)]
    for run in runs:
        read_until(run, "waiting for the migration lock")
    observer = server.connect("waiting")
    with observer.cursor() as cursor:

        def sessions() -> int:
            cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = 'waiting'")
            return int(cursor.fetchone()[0])

        def open_now() -> int:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = 'waiting' AND application_name LIKE 'migrator@%%'"
            )
            return int(cursor.fetchone()[0])

        first, began, most = sessions(), time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            most = max(most, open_now())
            time.sleep(0.05)
        rate = (sessions() - first) / (time.perf_counter() - began)
    observer.close()
    holder.close()  # releases the lock: one run applies, the others find nothing to do
    for run in runs:
        finish(run, 0)
    return {"connections per second": rate, "sessions open at once, most": float(most)}


def connections_per_run(server: Server, ini: Path, database: str, *arguments: str) -> int:
    """Connections the server saw one run open (its log_connections lines)."""
    url = server.url(database)
    since = server.log_size()
    finish(start(url, ini, *arguments), 0)
    time.sleep(0.2)  # the server writes its log line a moment after the connection
    return sum("connection authorized" in message for _, message in server.log_events(since))


def repeat(measure: Callable[[], float], runs: int) -> list[float]:
    return [measure() for _ in range(runs)]


def connection_counts(server: Server) -> dict[str, int]:
    server.fresh_database("counted")
    return {
        "upgrade, 3 revisions to apply": connections_per_run(
            server, AUDITED, "counted", "upgrade", "head"
        ),
        "upgrade, nothing to do": connections_per_run(
            server, AUDITED, "counted", "upgrade", "head"
        ),
        "downgrade base, env.py with its own connection": connections_per_run(
            server, OWN_CONNECTION, "counted", "downgrade", "base"
        ),
    }
