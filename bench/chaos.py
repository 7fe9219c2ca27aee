"""A chaos soak: many concurrent `migrator upgrade head` runs (and a few `downgrade -3`)
while the database misbehaves, then a check that nothing was applied twice, nothing ran at
the same time, every exit status is one the README documents, and nothing leaked.

    .venv/bin/python bench/chaos.py --runs 100 [--seed N] [--keep]

Why: the tests prove each production condition alone (tests/test_production_conditions.py);
deploys meet them together and at unlucky moments. This script starts a PostgreSQL of its
own (the server binaries, as the `postgres` user: a non-superuser role owns the database,
SCRAM over TCP, max_connections=40), a PgBouncer in session mode (pool size 5) and a
stalling userspace proxy (tests/conditions.py's Proxy) in front of it. It generates an
Alembic project of 20 revisions that audit themselves: each inserts a row (revision,
direction, backend pid, txid, start and end time) in its own transaction, so a row exists
exactly when its revision committed. Waves of 10 to 20 concurrent runs go direct, through
PgBouncer or through the proxy, half with `alembic init`'s env.py (a connection of its own)
and half with an env.py that uses `config.attributes['connection']`. Meanwhile a chaos
thread restarts the server, terminates the migrator's sessions, stalls the proxy, uses up
the connection slots and sends SIGTERM to runs (some within their first 300 ms).

Afterwards it prints the figures (runs, chaos events, exit statuses, each problem's stderr
line) and exits 0 only when every must-be-zero count is zero; otherwise 1, naming each.
Besides the audit (applied or reverted twice, overlapping applications) and leaks (locks,
scratch databases, the password in any spelling), these count as problems: a run alive
past wait + lock + network timeouts + 30 s; a status the README does not list; exit 1 (no
revision here fails on its own, so it is a misclassified outage); exit 2 or 6 (nothing
here is misconfigured; `downgrade -3` below the third revision is the one honest exit 2);
exit 4 sooner than the lock timeout (an exit 3 sooner than the wait timeout, outside the
lock, is printed, not counted: 3 is the documented outage status); an exit status other
than 0 after a summary that says status=ok (the README: a signal after the work changes
nothing);
"unexpected" (the migrator's word for its own bugs) or "Traceback" in any output; a final
run, with chaos stopped, that is not 0 at head. Nothing is hidden: a known weakness of the
migrator shows up as a count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg2
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conditions import (
    Proxy,
    as_server_user,
    auth_file_line,
    server_binaries,
    server_temp_dir,
    stop_process,
    wait_for_port,
)
from conftest import free_port

ROLE = "chaos_owner"
# Characters that break a naively built URL, a configparser value or an auth file.
PASSWORD = "ch@os%pa:ss/w#rd?+&="
DATABASE = "chaos"
MAX_CONNECTIONS = 40
POOL_SIZE = 5
REVISIONS = 20
OUTSIDE_TRANSACTION = 19  # the revision that builds an index outside a transaction
TIMEOUTS = {
    "MIGRATOR_WAIT_TIMEOUT": 30,
    "MIGRATOR_LOCK_TIMEOUT": 60,
    "MIGRATOR_NETWORK_TIMEOUT": 5,
}
WAIT, LOCK = TIMEOUTS["MIGRATOR_WAIT_TIMEOUT"], TIMEOUTS["MIGRATOR_LOCK_TIMEOUT"]
GRACE = 30
STILL_WAITING = 20  # seconds between two "still going" lines within a wave
DEADLINE = sum(TIMEOUTS.values()) + GRACE  # seconds a run may live, at most
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 130, 143}  # the README's "Exit status" table
ROUTES = ("direct", "pgbouncer", "proxy")
SHAPES = ("own", "shared")  # env.py: alembic init's (own connection), or the shared one
DRIVERS = ("postgresql+psycopg", "postgresql+psycopg2")
# "unexpected" marks a bug of the migrator's own (README); libpq's "closed the connection
# unexpectedly" is the server's news, not one.
SUSPICIOUS = re.compile(r"\bunexpected\b|Traceback")
DOWNGRADE_SHARE = 0.1
EARLY_SIGTERM_SHARE = 0.06
# Each round of chaos plays every kind this many times, shuffled: none is left out by luck.
CHAOS_ROUND = {"restart": 1, "terminate": 2, "stall": 1, "exhaust": 1, "sigterm": 3}
CHAOS_PAUSE = (0.2, 1.5)  # seconds between two events, at random
# The runs' environment: none of this shell's database settings.
BASE_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith(("DB_", "DATABASE_", "MIGRATOR_", "PG"))
}


def revision_id(number: int) -> str:
    return f"{number:02d}" * 6  # 010101010101 ... 202020202020


HEAD = revision_id(REVISIONS)


# -- the server, the pooler, the proxy -------------------------------------------------------


class LocalServer:
    """PostgreSQL from the server binaries, in a directory of its own: the role ROLE owns
    DATABASE and logs in over TCP with SCRAM; the superuser comes in over the socket."""

    def __init__(self, home: Path) -> None:
        self.bin = server_binaries()
        self.home = home
        self.data = home / "data"
        self.port = free_port()
        self._owner("initdb", "-D", self.data, "-U", "postgres", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        settings = {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(home),
            "max_connections": MAX_CONNECTIONS,
            "fsync": "off",
            "track_commit_timestamp": "on",  # orders the audit rows by commit
            "log_line_prefix": "%m [%p] ",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())
        self._owner("pg_ctl", "-D", self.data, "-l", home / "server.log", "-w", "start")
        with self.superuser("postgres") as admin, admin.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (PASSWORD,))
            cursor.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def _owner(self, program: str, *args: str | Path) -> None:
        """A server program as the `postgres` user (the server refuses root)."""
        command = as_server_user(self.bin / program, *args)
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def restart(self) -> None:
        log = self.home / "server.log"
        self._owner("pg_ctl", "-D", self.data, "-l", log, "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._owner("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    @contextlib.contextmanager
    def superuser(self, database: str = DATABASE) -> Iterator[Any]:
        connection = psycopg2.connect(
            host=str(self.home), port=self.port, user="postgres", dbname=database
        )
        connection.autocommit = True
        try:
            yield connection
        finally:
            connection.close()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.superuser() as admin, admin.cursor() as cursor:
            cursor.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    def connect_as_role(self) -> Any:
        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=ROLE,
            password=PASSWORD,
            dbname=DATABASE,
            application_name="chaos-exhaust",
            connect_timeout=3,
        )


class Bouncer:
    """PgBouncer in session mode in front of the server, as production runs it."""

    def __init__(self, home: Path, server: LocalServer) -> None:
        self.home = home
        self.port = free_port()
        home.mkdir()
        (home / "users.txt").write_text(auth_file_line(ROLE, PASSWORD))
        (home / "pgbouncer.ini").write_text(
            f"[databases]\n{DATABASE} = host=127.0.0.1 port={server.port} dbname={DATABASE}\n\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {home}\nauth_type = scram-sha-256\n"
            f"auth_file = {home / 'users.txt'}\npool_mode = session\n"
            f"default_pool_size = {POOL_SIZE}\nmax_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            "query_wait_timeout = 30\nserver_login_retry = 3\n"
        )
        for path in [home, *home.iterdir()]:
            shutil.chown(path, "postgres")
        with open(home / "pgbouncer.log", "wb") as log:
            # It refuses root too; not runuser, which forwards SIGTERM and then sleeps.
            self.process = subprocess.Popen(
                ["pgbouncer", str(home / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user="postgres",
                group="postgres",
                extra_groups=[],
            )
        wait_for_port(self.port, self.process, timeout=10)

    def stop(self) -> None:
        stop_process(self.process)


def database_url(driver: str, port: int) -> str:
    """The URL a user writes: the password percent-encoded."""
    return f"{driver}://{ROLE}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/{DATABASE}"


def password_spellings() -> set[str]:
    """Every way the password could leak into an output."""
    encoded = quote(PASSWORD, safe="")
    rendered = sa.URL.create("postgresql", username=ROLE, password=PASSWORD, host="h")
    in_url = rendered.render_as_string(hide_password=False).split(":", 2)[2].rsplit("@", 1)[0]
    return {
        PASSWORD,
        encoded,
        quote_plus(PASSWORD),
        quote(PASSWORD),
        in_url,
        encoded.replace("%", "%%"),  # as configparser would hold it
    }


# -- the Alembic project ---------------------------------------------------------------------

SHARED_ENV_PY = '''"""env.py on the connection the migrator hands over (Alembic's recipe)."""

from logging.config import fileConfig

from sqlalchemy import engine_from_config, pool

from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        with engine.connect() as own:
            context.configure(connection=own, target_metadata=None)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
'''

REVISION_HEAD = '''"""chaos revision {number}"""

import sqlalchemy as sa

from alembic import op

revision = "{revision}"
down_revision = {down_revision!r}


def begin(direction: str, started: object = None) -> None:
    """The audit row, in the revision's own transaction: it exists iff the revision
    committed. `started` is when the revision began, when that was earlier."""
    op.get_bind().execute(
        sa.text(
            "INSERT INTO chaos_audit (revision, direction, backend_pid, txid, started_at) "
            "VALUES (:revision, :direction, pg_backend_pid(), txid_current(), "
            "coalesce(CAST(:started AS timestamptz), clock_timestamp()))"
        ),
        {{"revision": revision, "direction": direction, "started": started}},
    )


def end(direction: str) -> None:
    op.execute("SELECT pg_sleep(0.05)")
    op.get_bind().execute(
        sa.text(
            "UPDATE chaos_audit SET ended_at = clock_timestamp() "
            "WHERE txid = txid_current() AND revision = :revision AND direction = :direction"
        ),
        {{"revision": revision, "direction": direction}},
    )
'''

FIRST_REVISION = """

def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS chaos_audit (id bigserial PRIMARY KEY, revision text, "
        "direction text, backend_pid int, txid bigint, started_at timestamptz, "
        "ended_at timestamptz)"
    )
    begin("upgrade")
    op.execute("CREATE TABLE IF NOT EXISTS chaos_items (code int)")
    end("upgrade")


def downgrade() -> None:
    begin("downgrade")  # the audit table and chaos_items stay: the soak reads the table
    end("downgrade")
"""

PLAIN_REVISION = """

def upgrade() -> None:
    begin("upgrade")
    op.execute("CREATE TABLE IF NOT EXISTS chaos_t{number} (id int)")
    end("upgrade")


def downgrade() -> None:
    begin("downgrade")
    op.execute("DROP TABLE IF EXISTS chaos_t{number}")
    end("downgrade")
"""

# Outside a transaction, so guarded: an interrupted build leaves an INVALID index, which
# IF NOT EXISTS alone would keep.
OUTSIDE_REVISION = """

def started() -> object:
    return op.get_bind().execute(sa.text("SELECT clock_timestamp()")).scalar()


def upgrade() -> None:
    began = started()
    with op.get_context().autocommit_block():
        valid = op.get_bind().execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                    "to_regclass('chaos_items_code')")
        ).scalar()
        if valid is False:
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS chaos_items_code")
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS chaos_items_code ON chaos_items (code)"
        )
    begin("upgrade", began)
    end("upgrade")


def downgrade() -> None:
    began = started()
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS chaos_items_code")
    begin("downgrade", began)
    end("downgrade")
"""


def revision_source(number: int) -> str:
    down = revision_id(number - 1) if number > 1 else None
    head = REVISION_HEAD.format(number=number, revision=revision_id(number), down_revision=down)
    if number == 1:
        return head + FIRST_REVISION
    if number == OUTSIDE_TRANSACTION:
        return head + OUTSIDE_REVISION
    return head + PLAIN_REVISION.format(number=number)


def alembic_init(project: Path, shape: str) -> Path:
    """`alembic init` in project/shape, sharing project/versions; returns its alembic.ini."""
    home = project / shape
    home.mkdir(parents=True)
    alembic = Path(sys.executable).parent / "alembic"
    subprocess.run(
        [str(alembic), "init", "alembic"], cwd=home, check=True, capture_output=True, timeout=60
    )
    ini = home / "alembic.ini"
    text = re.sub(r"(?m)^sqlalchemy\.url = .*$", "sqlalchemy.url =", ini.read_text())
    text = text.replace("[alembic]\n", "[alembic]\nversion_locations = %(here)s/../versions\n", 1)
    ini.write_text(text)
    if shape == "shared":
        (home / "alembic" / "env.py").write_text(SHARED_ENV_PY)
    return ini


def generate_project(project: Path) -> dict[str, Path]:
    """The 20 audited revisions, and one alembic.ini per env.py shape."""
    versions = project / "versions"
    versions.mkdir(parents=True)
    for number in range(1, REVISIONS + 1):
        (versions / f"r{number:02d}.py").write_text(revision_source(number))
    return {shape: alembic_init(project, shape) for shape in SHAPES}


# -- runs ------------------------------------------------------------------------------------


@dataclass
class Run:
    number: int
    wave: int
    route: str
    shape: str
    driver: str
    arguments: list[str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seconds: float = 0.0
    status: int | None = None
    past_deadline: bool = False
    signalled_after: float | None = None  # seconds from start to SIGTERM, when sent one
    died_of_signal: bool = False  # ended by the signal's default action: no handler yet

    @property
    def stderr(self) -> str:
        return (self.logs / f"{self.number:04d}.err").read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return (self.logs / f"{self.number:04d}.out").read_text(errors="replace")

    def error_line(self) -> str:
        """The last stderr line before the summary (the one that says what happened)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        lines = [line for line in lines if " summary " not in f" {line}"] or lines
        return lines[-1] if lines else "(no output)"

    def summary_status(self) -> str | None:
        """`status=` of the run's summary line, when it wrote one."""
        found = re.findall(r"\bsummary command=.* status=(.+)$", self.stderr, re.MULTILINE)
        return found[-1].strip() if found else None

    def label(self) -> str:
        driver = self.driver.split("+")[1]
        command = " ".join(self.arguments)
        return f"run {self.number} ({command}, {self.route}, {self.shape} env.py, {driver})"


def start_run(run: Run, url: str, ini: Path) -> None:
    env = {
        **BASE_ENV,
        "DATABASE_URL": url,
        "MIGRATOR_CONFIG": str(ini),
        "MIGRATOR_SAFETY": "off",
        **{key: str(value) for key, value in TIMEOUTS.items()},
    }
    with (
        open(run.logs / f"{run.number:04d}.out", "wb") as out,
        open(run.logs / f"{run.number:04d}.err", "wb") as err,
    ):
        run.started = time.monotonic()
        run.process = subprocess.Popen(
            [sys.executable, "-m", "migrator", *run.arguments],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=run.logs,
        )


def exit_status(returncode: int) -> int:
    """As a shell or Kubernetes reports it: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def wait_for_runs(runs: list[Run]) -> None:
    """Until each run ends; one alive past DEADLINE is counted and killed. Says every
    STILL_WAITING seconds what it waits for, so the soak is never silent for long."""
    pending = list(runs)
    said = time.monotonic()
    while pending:
        time.sleep(0.05)
        if time.monotonic() - said > STILL_WAITING:
            said = time.monotonic()
            oldest = max(said - run.started for run in pending)
            print(f"  ... {len(pending)} run(s) still going, the oldest for {oldest:.0f} s")
        for run in list(pending):
            assert run.process is not None
            returncode = run.process.poll()
            alive_for = time.monotonic() - run.started
            if returncode is None and alive_for > DEADLINE:
                run.past_deadline = True
                run.process.kill()
                returncode = run.process.wait()
            if returncode is not None:
                run.seconds = alive_for
                run.status = exit_status(returncode)
                run.died_of_signal = returncode < 0 and not run.past_deadline
                pending.remove(run)


# -- chaos -----------------------------------------------------------------------------------


@dataclass
class Chaos:
    """Events at random intervals, in a thread of their own, one at a time."""

    server: LocalServer
    proxy: Proxy
    rng: random.Random
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    terminated_sessions: int = 0
    running: list[Run] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="chaos", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        self.proxy.resume()

    def watch(self, runs: list[Run]) -> None:
        with self.lock:
            self.running = list(runs)

    def sigterm_soon(self, run: Run) -> None:
        """SIGTERM within the run's first 300 ms (its interpreter may not have started)."""
        delay = self.rng.uniform(0, 0.3)
        threading.Timer(delay, self._sigterm, args=(run, "sigterm-early")).start()

    def _loop(self) -> None:
        for kind in self._kinds():
            if self.stopping.wait(self.rng.uniform(*CHAOS_PAUSE)):
                return
            try:
                getattr(self, f"_{kind}")()
            except Exception as error:  # the soak goes on; the error is reported
                self.errors[f"{kind}: {type(error).__name__}: {error}".splitlines()[0]] += 1

    def _kinds(self) -> Iterator[str]:
        """Round after round of CHAOS_ROUND, each shuffled."""
        while True:
            kinds = [kind for kind, times in CHAOS_ROUND.items() for _ in range(times)]
            self.rng.shuffle(kinds)
            yield from kinds

    def _restart(self) -> None:
        self.events["restart"] += 1
        self.server.restart()

    def _terminate(self) -> None:
        self.events["terminate"] += 1
        ended = self.server.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'migrator%' AND pid <> pg_backend_pid()"
        )
        self.terminated_sessions += len(ended)

    def _stall(self) -> None:
        self.events["stall"] += 1
        self.proxy.stall()
        try:
            self.stopping.wait(self.rng.uniform(2, 6))
        finally:
            self.proxy.resume()

    def _exhaust(self) -> None:
        self.events["exhaust"] += 1
        held = []
        try:
            for _ in range(MAX_CONNECTIONS + 5):
                try:
                    held.append(self.server.connect_as_role())
                except psycopg2.OperationalError:
                    break
            self.stopping.wait(self.rng.uniform(2, 5))
        finally:
            for connection in held:
                connection.close()

    def _sigterm(self, run: Run | None = None, kind: str = "sigterm") -> None:
        if run is None:
            with self.lock:
                alive = [r for r in self.running if r.process and r.process.poll() is None]
            if not alive:
                return
            run = self.rng.choice(alive)
        assert run.process is not None
        if run.process.poll() is None:
            run.signalled_after = time.monotonic() - run.started
            run.process.send_signal(signal.SIGTERM)
            self.events[kind] += 1


# -- the soak --------------------------------------------------------------------------------


@dataclass
class Soak:
    server: LocalServer
    bouncer: Bouncer
    proxy: Proxy
    inis: dict[str, Path]
    logs: Path
    rng: random.Random
    chaos: Chaos
    runs: list[Run] = field(default_factory=list)
    layouts: list[tuple[str, str]] = field(default_factory=list)  # each wave's route, env.py

    def plan(self, waves: int) -> None:
        """Each wave's route and env.py shape: every pair once per six waves, in an order
        of the seed's (so which pair meets an empty database varies from seed to seed)."""
        pairs = [(route, shape) for route in ROUTES for shape in SHAPES]
        while len(self.layouts) < waves:
            self.layouts += self.rng.sample(pairs, len(pairs))

    def port(self, route: str) -> int:
        return {
            "direct": self.server.port,
            "pgbouncer": self.bouncer.port,
            "proxy": self.proxy.port,
        }[route]

    def new_run(self, wave: int, route: str, shape: str) -> Run:
        downgrade = self.rng.random() < DOWNGRADE_SHARE
        arguments = ["downgrade", "-3"] if downgrade else ["upgrade", "head"]
        run = Run(
            len(self.runs) + 1, wave, route, shape, self.rng.choice(DRIVERS), arguments, self.logs
        )
        self.runs.append(run)
        return run

    def wave(self, number: int, size: int) -> list[Run]:
        route, shape = self.layouts[number]
        runs = [self.new_run(number, route, shape) for _ in range(size)]
        self.chaos.watch(runs)
        for run in runs:
            start_run(run, database_url(run.driver, self.port(route)), self.inis[shape])
            if self.rng.random() < EARLY_SIGTERM_SHARE:
                self.chaos.sigterm_soon(run)
        wait_for_runs(runs)
        return runs

    def kill_all(self) -> None:
        """On the way out (an error, Ctrl-C): no run outlives the soak."""
        for run in self.runs:
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
                run.process.wait()

    def final_run(self) -> Run:
        run = Run(
            len(self.runs) + 1, -1, "direct", "own", DRIVERS[0], ["upgrade", "head"], self.logs
        )
        start_run(run, database_url(run.driver, self.server.port), self.inis["own"])
        wait_for_runs([run])
        return run


def wave_sizes(runs: int, rng: random.Random) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < runs:
        sizes.append(min(rng.randint(10, 20), runs - sum(sizes)))
    return sizes


def histogram(statuses: list[int]) -> str:
    counts = Counter(statuses)
    return " ".join(f"{status}x{counts[status]}" for status in sorted(counts)) or "-"


def progress(number: int, total: int, runs: list[Run], seconds: float, chaos: Chaos) -> None:
    first = runs[0]
    events = ", ".join(f"{kind} {count}" for kind, count in sorted(chaos.events.items()))
    print(
        f"wave {number + 1}/{total}: {len(runs)} runs via {first.route}, {first.shape} env.py:"
        f" {histogram([run.status for run in runs if run.status is not None])}"
        f" in {seconds:.1f} s; chaos so far: {events or 'none'}"
    )


# -- what the audit table and the server say -------------------------------------------------


@dataclass
class AuditRow:
    revision: str
    direction: str
    pid: int
    txid: int
    started: datetime
    ended: datetime
    committed: datetime


def audit_rows(server: LocalServer) -> list[AuditRow]:
    rows = server.query(
        "SELECT revision, direction, backend_pid, txid, started_at, "
        "coalesce(ended_at, pg_xact_commit_timestamp(xmin)), pg_xact_commit_timestamp(xmin) "
        "FROM chaos_audit ORDER BY pg_xact_commit_timestamp(xmin), txid"
    )
    return [AuditRow(*row) for row in rows]


def repeated_directions(rows: list[AuditRow]) -> tuple[list[str], list[str]]:
    """Revisions applied twice (an upgrade after an upgrade, no downgrade between) and
    reverted twice (a downgrade with no upgrade since the last), in commit order."""
    applied: dict[str, bool] = {}
    twice: list[str] = []
    reverted: list[str] = []
    for row in rows:
        was_applied = applied.get(row.revision, False)
        if row.direction == "upgrade" and was_applied:
            twice.append(f"{row.revision} (pid {row.pid}, txid {row.txid})")
        if row.direction == "downgrade" and not was_applied:
            reverted.append(f"{row.revision} (pid {row.pid}, txid {row.txid})")
        applied[row.revision] = row.direction == "upgrade"
    return twice, reverted


def overlapping(rows: list[AuditRow]) -> list[str]:
    """Pairs of rows from different backends whose [start, end] intervals overlap."""
    found = []
    ordered = sorted(rows, key=lambda row: row.started)
    for index, row in enumerate(ordered):
        for later in ordered[index + 1 :]:
            if later.started > row.ended:
                break
            if later.pid != row.pid:
                found.append(
                    f"{row.revision} {row.direction} (pid {row.pid}) and "
                    f"{later.revision} {later.direction} (pid {later.pid})"
                )
    return found


def audit_disagrees(rows: list[AuditRow], at_head: bool) -> list[str]:
    """With the database at head, every revision's last audit row must be an upgrade."""
    if not at_head:
        return []
    last = {row.revision: row.direction for row in rows}
    return [
        revision_id(number)
        for number in range(1, REVISIONS + 1)
        if last.get(revision_id(number)) != "upgrade"
    ]


def leftover_locks(server: LocalServer, patience: float) -> int:
    """Advisory locks still held once vanished clients' sessions had time to end
    (the migrator's idle_session_timeout is twice the network timeout)."""
    deadline = time.monotonic() + patience
    while True:
        (count,) = server.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0]
        if count == 0 or time.monotonic() > deadline:
            return int(count)
        time.sleep(0.5)


def scratch_databases(server: LocalServer) -> int:
    rows = server.query("SELECT count(*) FROM pg_database WHERE datname LIKE 'migrator_scratch_%'")
    return int(rows[0][0])


def database_revision(server: LocalServer) -> str | None:
    rows = server.query("SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


# -- the report ------------------------------------------------------------------------------


def normalized(line: str) -> str:
    """A log line without its timestamp, with its numbers blurred, for grouping."""
    line = re.sub(r"^\d{4}-\d\d-\d\dT\S+ +\w+ +", "", line)
    line = re.sub(r"migrator@[\w.-]+", "migrator@HOST", line)
    return re.sub(r"\d+(\.\d+)?", "N", line)


def grouped(runs: list[Run]) -> list[str]:
    """Error lines alike once numbers are blurred: a count and one example, verbatim."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(normalized(run.error_line()), []).append(run)
    ordered = sorted(groups.values(), key=len, reverse=True)
    return [f"{len(alike)}x, e.g. {alike[0].label()}: {alike[0].error_line()}" for alike in ordered]


def print_block(title: str, lines: list[str], limit: int = 40) -> None:
    print(title)
    for line in lines[:limit]:
        print(f"    {line}")
    if len(lines) > limit:
        print(f"    ... and {len(lines) - limit} more")


def described(runs: list[Run]) -> list[str]:
    return [
        f"{run.label()}: exit {run.status} after {run.seconds:.1f} s: {run.error_line()}"
        for run in runs
    ]


def misconfigured(run: Run) -> bool:
    """Exit 2 or 6 says the setup is wrong; here it never is. `downgrade -3` below the
    third revision is the one honest exit 2 (Alembic: didn't produce 3 migrations)."""
    if run.status == 2 and run.arguments[0] == "downgrade":
        return "Relative revision" not in run.error_line()
    return run.status in (2, 6)


# Each must-be-zero list of Findings, by the title the report gives it.
FINDINGS: dict[str, str] = {
    "applied_twice": "revisions applied twice",
    "reverted_twice": "revisions reverted twice",
    "overlaps": "overlapping applications",
    "audit_disagrees": "revisions whose audit disagrees with the version table",
    "past_deadline": f"runs alive past their deadline ({DEADLINE} s)",
    "undocumented": "statuses not in the README's table",
    "exit_1": "exit 1 (no revision fails here: an outage misclassified)",
    "not_misconfigured": "exit 2 or 6 (nothing is misconfigured here)",
    "early_exit_4": f"exit 4 before MIGRATOR_LOCK_TIMEOUT ({LOCK} s)",
    "disagrees": "exit status disagrees with the summary line (status=ok is exit 0)",
    "suspicious": "lines with 'unexpected' or 'Traceback'",
    "password": "password spellings in output",
}


@dataclass
class Findings:
    """Every must-be-zero list, each entry a line that says which run or row and why."""

    applied_twice: list[str]
    reverted_twice: list[str]
    overlaps: list[str]
    audit_disagrees: list[str]
    past_deadline: list[str]
    undocumented: list[str]
    exit_1: list[str]
    not_misconfigured: list[str]
    early_exit_4: list[str]
    disagrees: list[str]
    suspicious: list[str]
    password: list[str]
    locks: int
    scratch: int
    final: str  # empty when the final run exited 0 at head

    # Printed, not counted: 3 is the outage status the README documents, but before the
    # lock a run should reconnect within the wait timeout (1 run in 1,000 did not: the
    # watch for a proxy that stops forwarding ended it during a long plain stall).
    early_exit_3: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {title: len(getattr(self, name)) for name, title in FINDINGS.items()}
        counts["leftover advisory locks"] = self.locks
        counts["leftover scratch databases"] = self.scratch
        counts["final run not 0 at head"] = int(bool(self.final))
        return counts


def run_findings(runs: list[Run], everything: list[Run]) -> dict[str, list[str]]:
    """What the runs' statuses, times and outputs show."""
    spellings = password_spellings()
    return {
        "past_deadline": described([r for r in everything if r.past_deadline]),
        "undocumented": described(
            [r for r in runs if r.status not in DOCUMENTED and not r.past_deadline]
        ),
        "exit_1": described([r for r in runs if r.status == 1]),
        "not_misconfigured": described([r for r in runs if misconfigured(r)]),
        "early_exit_3": described(
            [r for r in runs if r.status == 3 and r.seconds < WAIT and not under_lock(r)]
        ),
        "early_exit_4": described([r for r in runs if r.status == 4 and r.seconds < LOCK]),
        "disagrees": [
            f"{run.label()}: exit {run.status}, summary status={run.summary_status()}"
            for run in everything
            if (run.summary_status() == "ok") != (run.status == 0) and run.summary_status()
        ],
        "suspicious": [
            f"{run.label()}: {line.strip()}"
            for run in everything
            for line in (run.stderr + run.stdout).splitlines()
            if SUSPICIOUS.search(line)
        ],
        "password": [
            f"{run.label()}: {spelling!r}"
            for run in everything
            for spelling in sorted(spellings)
            if spelling in run.stderr + run.stdout
        ],
    }


# The README's cause-to-status table: an outage met while holding the lock is 3 at once
# (waiting there would hold up every run queued behind the lock).
UNDER_LOCK = re.compile(r"while this run held the migration lock|env\.py's connection was lost")


def under_lock(run: Run) -> bool:
    return bool(UNDER_LOCK.search(run.stderr))


def gather(soak: Soak, final: Run) -> Findings:
    server = soak.server
    revision = database_revision(server)
    at_head = final.status == 0 and revision == HEAD
    rows = audit_rows(server)
    twice, reverted = repeated_directions(rows)
    patience = 2 * TIMEOUTS["MIGRATOR_NETWORK_TIMEOUT"] + 10
    return Findings(
        applied_twice=twice,
        reverted_twice=reverted,
        overlaps=overlapping(rows),
        audit_disagrees=audit_disagrees(rows, at_head),
        **run_findings(soak.runs, [*soak.runs, final]),
        locks=leftover_locks(server, patience),
        scratch=scratch_databases(server),
        final="" if at_head else f"exit {final.status}, at {revision}: {final.error_line()}",
    )


def print_findings(findings: Findings) -> None:
    for name, title in FINDINGS.items():
        entries = getattr(findings, name)
        print_block(f"{title}: {len(entries)}", entries)
    print(f"leftover advisory locks: {findings.locks}")
    print(f"leftover scratch databases: {findings.scratch}")
    print_block(
        f"watched, not a fault: exit 3 before MIGRATOR_WAIT_TIMEOUT ({WAIT} s), not under the "
        f"lock: {len(findings.early_exit_3)}",
        findings.early_exit_3,
    )

    print(f"final upgrade head: {findings.final or f'exit 0, at head {HEAD}'}")


def print_figures(soak: Soak, wall: float) -> None:
    runs, chaos = soak.runs, soak.chaos
    events = ", ".join(f"{kind} {count}" for kind, count in sorted(chaos.events.items()))
    downgrades = sum(run.arguments[0] == "downgrade" for run in runs)
    print()
    print(f"runs: {len(runs)} ({downgrades} downgrade -3) in {len({r.wave for r in runs})} waves")
    print(f"wall time: {wall:.0f} s")
    print(f"chaos events: {events or 'none'} (sessions terminated: {chaos.terminated_sessions})")
    if chaos.errors:
        print_block("chaos events that failed:", [f"{n}x {e}" for e, n in chaos.errors.items()])
    print(f"audit rows: {len(audit_rows(soak.server))}")
    print(f"exit statuses: {histogram([r.status for r in runs if r.status is not None])}")
    print_signals(runs)
    for route in ROUTES:
        statuses = [r.status for r in runs if r.route == route and r.status is not None]
        print(f"  exit statuses via {route}: {histogram(statuses)}")


def print_signals(runs: list[Run]) -> None:
    """SIGTERMs sent, and those that came before the migrator's handler (the README allows
    the interpreter's own start, "tens of milliseconds")."""
    signalled = [run for run in runs if run.signalled_after is not None]
    print(f"runs sent SIGTERM: {len(signalled)}")
    for died, how in ((True, "by the signal's default action"), (False, "by the migrator")):
        moments = sorted(r.signalled_after or 0 for r in signalled if r.died_of_signal == died)
        if moments:
            when = f"{moments[0] * 1000:.0f}-{moments[-1] * 1000:.0f} ms after start"
            print(f"  ended {how}: {len(moments)}, signalled {when}")
    print_block(
        "  ended by the signal's default action, each:",
        [
            f"{run.label()}: signalled {(run.signalled_after or 0) * 1000:.0f} ms after start;"
            f" last line: {run.error_line()}"
            for run in signalled
            if run.died_of_signal
        ],
    )


def print_error_lines(runs: list[Run]) -> None:
    print("error lines by status (alike once numbers are blurred):")
    for status in sorted({run.status for run in runs if run.status}):
        print_block(f"  exit {status}:", grouped([r for r in runs if r.status == status]), 15)


def report(soak: Soak, final: Run, wall: float) -> int:
    """Prints the figures and findings; 0 when every must-be-zero count is zero."""
    findings = gather(soak, final)
    print_figures(soak, wall)
    print_findings(findings)
    print_error_lines(soak.runs)
    failed = [f"{name} ({count})" for name, count in findings.counts().items() if count]
    print()
    if failed:
        print(f"FAIL: {', '.join(failed)}")
        return 1
    print("PASS: every must-be-zero count is zero")
    return 0


# -- main ------------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="migrator runs (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, project)")
    return parser.parse_args()


def soak(options: argparse.Namespace, home: Path) -> int:
    seed = options.seed if options.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    print(f"chaos: seed {seed}, {options.runs} runs, temp dir {home}")
    logs = home / "runs"
    logs.mkdir()
    inis = generate_project(home / "project")
    with contextlib.ExitStack() as cleanup:
        server = LocalServer(home)
        cleanup.callback(server.stop)
        bouncer = Bouncer(home / "pgbouncer", server)
        cleanup.callback(bouncer.stop)
        proxy = Proxy(None, ("127.0.0.1", server.port))
        cleanup.callback(proxy.close)
        chaos = Chaos(server, proxy, random.Random(rng.random()))
        cleanup.callback(chaos.stopping.set)
        the_soak = Soak(server, bouncer, proxy, inis, logs, rng, chaos)
        cleanup.callback(the_soak.kill_all)
        return drive(the_soak, wave_sizes(options.runs, rng))
    raise AssertionError("unreachable")


def drive(soak: Soak, sizes: list[int]) -> int:
    """The waves under chaos, then chaos stopped, the final run and the report."""
    started = time.monotonic()
    soak.plan(len(sizes))
    soak.chaos.start()
    for number, size in enumerate(sizes):
        wave_started = time.monotonic()
        runs = soak.wave(number, size)
        progress(number, len(sizes), runs, time.monotonic() - wave_started, soak.chaos)
    soak.chaos.stop()
    print("chaos stopped; one more upgrade head, direct")
    final = soak.final_run()
    return report(soak, final, time.monotonic() - started)


def main() -> int:
    options = arguments()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, live
    home = server_temp_dir("migrator-chaos-")
    try:
        return soak(options, home)
    finally:
        if options.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
