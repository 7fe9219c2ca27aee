"""The migrator beside plain Alembic and dbmate: same machine, same PostgreSQL, same run.

    scripts/bench.sh [--output bench/RESULTS.md] [--only noop,apply,...]

Prepares a throwaway PostgreSQL (bench/server.py), generates migration chains
(bench/chain.py), installs dbmate from npm into bench/.cache, and times whole processes, as a
deploy sees them. Runs of the tools being compared take turns, so a slow moment of the
machine falls on each alike; every ratio compares medians from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy

import alembic

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chain
import fleet as fleets
import production
from server import Server
from traffic import Load

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
BIN = Path(sys.executable).parent
DBMATE_VERSION = "2.36.0"
PARTS = (
    "noop",
    "apply",
    "readiness",
    "concurrency",
    "memory",
    "image",
    "traffic",
    "conditions",
    "verify",
    "safety",
    "fleet",
)
# The tools run as a user runs them: none of this shell's database settings, and Python
# free to cache bytecode (an installed package or image has it compiled already).
TOOL_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith(("DB_", "DATABASE_", "MIGRATOR_", "DBMATE_", "PG"))
    and key != "PYTHONDONTWRITEBYTECODE"
}

Command = tuple[list[str], dict[str, str]]  # the arguments, and environment to add

ALEMBIC = "alembic upgrade head"
ALEMBIC_PER_REVISION = "alembic upgrade head, a commit per revision"
MIGRATOR = "migrator upgrade head"
MIGRATOR_NO_SAFETY = "migrator upgrade head, MIGRATOR_SAFETY=off"
MIGRATOR_MANIFEST = "migrator upgrade head, with the manifest"
DBMATE = "dbmate migrate (Go binary)"
DBMATE_NPM = "dbmate migrate (npm launcher)"


@dataclass
class Finished:
    code: int
    seconds: float
    max_rss_mib: float
    stderr: str


def run(command: Command, check: bool = True) -> Finished:
    """Run a command to its end: wall seconds and peak memory (its own or its children's).

    GNU time reads the peak: a child forked from this Python process would report at least
    this process's own size, since Linux carries the peak across fork and exec.
    """
    arguments, env = command
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        finished = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", peak.name, *arguments],
            env={**TOOL_ENV, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        seconds = time.perf_counter() - started
        max_rss_kib = int(peak.read().split()[-1])
    if check and finished.returncode != 0:
        raise SystemExit(
            f"bench: {' '.join(arguments)} exited {finished.returncode}:\n{finished.stderr}"
        )
    return Finished(finished.returncode, seconds, max_rss_kib / 1024, finished.stderr)


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], unit: str = "s") -> str:
    """min / median / max, in seconds to the millisecond or in whole milliseconds."""
    scale, digits = (1000, 0) if unit == "ms" else (1, 3)
    return " / ".join(f"{v * scale:.{digits}f}" for v in (min(values), median(values), max(values)))


class Tools:
    """The command lines of the tools compared, each against a database of the server."""

    def __init__(self, server: Server, dbmate_npm: Path, dbmate_go: Path) -> None:
        self.server = server
        self.dbmate_npm = dbmate_npm
        self.dbmate_go = dbmate_go

    def url(self, database: str) -> str:
        """Both Python tools on one driver, psycopg2 (what the floor imports), so that the
        comparison is of the tools: SQLAlchemy 2.1 reads postgresql:// as psycopg 3."""
        return self.server.url(database).replace("postgresql://", "postgresql+psycopg2://")

    def migrator(self, ini: Path, database: str, *arguments: str, **env: str) -> Command:
        return [str(BIN / "migrator"), *(arguments or ("upgrade", "head"))], {
            "DATABASE_URL": self.url(database),
            "MIGRATOR_CONFIG": str(ini),
            **env,
        }

    def alembic(self, ini: Path, database: str, *arguments: str) -> Command:
        """Plain Alembic reads its URL from alembic.ini: a copy of the project's, per database."""
        copy = ini.with_name(f"{ini.stem}-{database}.ini")
        if not copy.exists():
            chain.write_url(ini, copy, self.url(database))
        return [str(BIN / "alembic"), "-c", str(copy), *(arguments or ("upgrade", "head"))], {}

    def dbmate(self, migrations: Path, database: str, *flags: str, npm: bool = False) -> Command:
        program = self.dbmate_npm if npm else self.dbmate_go
        return [
            str(program),
            *("--url", self.server.url(database) + "?sslmode=disable"),
            *("--migrations-dir", str(migrations)),
            "--no-dump-schema",
            *flags,
            "migrate",
        ], {}

    @staticmethod
    def floor() -> Command:
        return [sys.executable, "-c", "import sqlalchemy, alembic, psycopg2"], {}


def install_dbmate() -> tuple[Path, Path]:
    """dbmate from npm: the node launcher the package installs, and the Go binary it runs."""
    prefix = CACHE / f"dbmate-{DBMATE_VERSION}"
    launcher = prefix / "node_modules" / ".bin" / "dbmate"
    if not launcher.exists():
        print(
            f"bench: installing dbmate {DBMATE_VERSION} from npm (a few seconds)",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                f"dbmate@{DBMATE_VERSION}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    binary = prefix / "node_modules" / "@dbmate" / "linux-x64" / "bin" / "dbmate"
    return launcher, binary if binary.exists() else launcher


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.small = args.sizes[0]
        dbmate = install_dbmate()
        self.work = Path(tempfile.mkdtemp(prefix="migrator-bench-chains-"))
        self.projects = {
            size: chain.write_projects(self.work / f"chain{size}", chain.chain(size))
            for size in args.sizes
        }
        self.server = Server()  # last: close() stops it
        self.tools = Tools(self.server, *dbmate)
        self.report: list[str] = []
        self.memory_mib: dict[str, float] = {}

    def close(self) -> None:
        self.server.destroy()
        shutil.rmtree(self.work, ignore_errors=True)

    def say(self, line: str = "") -> None:
        self.report.append(line)
        print(line, flush=True)

    def table(self, header: str, rows: list[str]) -> None:
        self.say(header)
        self.say("|" + " --- |" * header.count("|", 1))
        for row in rows:
            self.say(row)
        self.say()

    def alternate(
        self,
        commands: dict[str, Command],
        runs: int,
        before: Callable[[str], object] | None = None,
        check: Callable[[str], None] | None = None,
    ) -> dict[str, list[Finished]]:
        """Each command `runs` times, taking turns. `before(name)` readies the database; a
        first, unmeasured run of each warms the page cache, and `check(name)` checks it."""
        results: dict[str, list[Finished]] = {name: [] for name in commands}
        for turn in range(runs + 1):
            for name, command in commands.items():
                if before:
                    before(name)
                finished = run(command)
                if turn == 0 and check:
                    check(name)
                elif turn > 0:
                    results[name].append(finished)
        return results

    def at_head(self, database: str, size: int) -> None:
        self.server.fresh_database(database)
        run(self.tools.migrator(self.projects[size][0], database))

    def header(self) -> None:
        postgres = subprocess.run(
            [self.server.bin / "postgres", "--version"], capture_output=True, text=True
        ).stdout.strip()
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        self.say(f"# Benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        self.say()
        self.say(
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}. "
            f"Python {platform.python_version()}, Alembic {alembic.__version__}, "
            f"SQLAlchemy {sqlalchemy.__version__}, psycopg2; {postgres} on loopback; "
            f"dbmate {DBMATE_VERSION} (node {node.strip()})."
        )
        self.say()
        self.say(
            "Times are whole processes, wall clock, as a deploy sees them. The chains mix "
            "create table (with 100 rows), add column, index, check constraint, data update and "
            "rename, as the same SQL for every tool."
        )
        self.say()


def noop(bench: Bench) -> None:
    size, runs = bench.small, bench.args.runs
    ini, migrations = bench.projects[size]
    bench.at_head("noop", size)
    bench.server.fresh_database("noop_dbmate")
    run(bench.tools.dbmate(migrations, "noop_dbmate"))
    results = bench.alternate(
        {
            "floor: python -c 'import sqlalchemy, alembic, psycopg2'": bench.tools.floor(),
            ALEMBIC: bench.tools.alembic(ini, "noop"),
            MIGRATOR: bench.tools.migrator(ini, "noop"),
            MIGRATOR_MANIFEST: bench.tools.migrator(with_manifest(ini), "noop"),
            DBMATE: bench.tools.dbmate(migrations, "noop_dbmate"),
            DBMATE_NPM: bench.tools.dbmate(migrations, "noop_dbmate", npm=True),
        },
        runs,
    )
    bench.say(f"## 1. No-op deploy: database at head, {size} revisions, {runs} runs each")
    bench.say()
    bench.table(
        "| command | seconds, min / median / max |",
        [f"| {name} | {spread([f.seconds for f in done])} |" for name, done in results.items()],
    )
    alembic_s = median([f.seconds for f in results[ALEMBIC]])
    migrator_s = median([f.seconds for f in results[MIGRATOR]])
    manifest_s = median([f.seconds for f in results[MIGRATOR_MANIFEST]])
    npm_s = median([f.seconds for f in results[DBMATE_NPM]])
    bench.say(
        f"migrator / alembic: **{migrator_s / alembic_s:.3f}x** "
        f"({(migrator_s - alembic_s) * 1000:+.0f} ms; target <= 1.05x). With the manifest: "
        f"**{manifest_s:.3f} s**, {alembic_s / manifest_s:.1f}x faster than alembic, "
        f"{npm_s / manifest_s:.2f}x dbmate's npm launcher's time (target <= 0.12 s)"
    )
    bench.say()


def with_manifest(ini: Path) -> Path:
    """A copy of the project's alembic.ini beside its manifest (`migrator manifest`), as an
    image build leaves it; the original stays without one."""
    directory = ini.parent.with_name(ini.parent.name + "-manifest")
    copy = directory / ini.name
    if not copy.exists():
        directory.mkdir()
        shutil.copy(ini, copy)
        run(([str(BIN / "migrator"), "manifest"], {"MIGRATOR_CONFIG": str(copy)}))
    return copy


def apply(bench: Bench) -> None:
    runs = bench.args.runs
    rows, medians = [], {}
    for size in bench.args.sizes:
        ini, migrations = bench.projects[size]
        commands = {
            ALEMBIC: bench.tools.alembic(ini, "apply"),
            ALEMBIC_PER_REVISION: bench.tools.alembic(chain.per_revision(ini), "apply"),
            MIGRATOR: bench.tools.migrator(ini, "apply"),
            MIGRATOR_NO_SAFETY: bench.tools.migrator(ini, "apply", MIGRATOR_SAFETY="off"),
            DBMATE: bench.tools.dbmate(migrations, "apply"),
            DBMATE_NPM: bench.tools.dbmate(migrations, "apply", npm=True),
        }
        results = bench.alternate(
            commands,
            runs,
            before=lambda _: bench.server.fresh_database("apply"),
            check=lambda name, size=size: check_applied(bench, name, size),
        )
        for name, done in results.items():
            medians[size, name] = median([f.seconds for f in done])
            rss = median([f.max_rss_mib for f in done])
            if size == bench.small:
                bench.memory_mib[name] = rss
            rows.append(f"| {size} | {name} | {spread([f.seconds for f in done])} | {rss:.1f} |")
    bench.say(f"## 2. Apply from empty, {runs} runs each")
    bench.say()
    bench.say(
        f"`{ALEMBIC_PER_REVISION}` runs the same revisions through an env.py whose one "
        "change is `transaction_per_migration=True`: what the migrator does."
    )
    bench.say()
    bench.say(
        f"`{MIGRATOR}` runs with the default `MIGRATOR_SAFETY=warn`: these projects have no "
        "recorded effects (no `migrator verify` ran), so the safety report only names the "
        "pending revisions in a note; part 10 times it with recorded effects."
    )
    bench.say()
    bench.table("| revisions | tool | seconds, min / median / max | peak RSS MiB |", rows)
    for size in bench.args.sizes:
        over_alembic = medians[size, MIGRATOR_NO_SAFETY] - medians[size, ALEMBIC]
        over_per_revision = medians[size, MIGRATOR_NO_SAFETY] - medians[size, ALEMBIC_PER_REVISION]
        safety = medians[size, MIGRATOR] - medians[size, MIGRATOR_NO_SAFETY]
        bench.say(
            f"- {size} revisions, `MIGRATOR_SAFETY=off`: migrator - alembic = "
            f"**{over_alembic * 1000:+.0f} ms** (target <= +50 ms); migrator - alembic with a "
            f"commit per revision = **{over_per_revision * 1000:+.0f} ms**, "
            f"**{over_per_revision * 1000 / size:+.2f} ms a revision** (the lock's fence and the "
            f"deploy ledger's row included; target <= +1 ms); the default's safety report adds "
            f"{safety * 1000:+.0f} ms"
        )
    large = bench.args.sizes[-1]
    if large != bench.small:
        for name in (ALEMBIC, ALEMBIC_PER_REVISION, MIGRATOR, MIGRATOR_NO_SAFETY, DBMATE):
            growth = medians[large, name] / medians[bench.small, name]
            each = (medians[large, name] - medians[bench.small, name]) / (large - bench.small)
            bench.say(
                f"- {name}: {bench.small} -> {large} revisions takes {growth:.2f}x as long; "
                f"each further revision costs {each * 1000:.2f} ms"
            )
    bench.say()


def check_applied(bench: Bench, name: str, size: int) -> None:
    """That a tool really applied the chain: every table and every version is there."""
    table = "schema_migrations" if "dbmate" in name else "alembic_version"
    connection = bench.server.connect("apply")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE tablename ~ '^t[0-9]+$'")
        tables = cursor.fetchone()[0]
        cursor.execute(f"SELECT count(*) FROM {table}")
        versions = cursor.fetchone()[0]
    connection.close()
    wanted = (chain.tables(size), size if "dbmate" in name else 1)
    if (tables, versions) != wanted:
        raise SystemExit(
            f"bench: after {name}, {tables} tables and {versions} rows in {table}; "
            f"wanted {wanted[0]} and {wanted[1]}"
        )


def readiness(bench: Bench) -> None:
    runs, down = bench.args.readiness_runs, bench.args.down_seconds
    ini, migrations = bench.projects[bench.small]
    bench.at_head("ready_migrator", bench.small)
    bench.server.fresh_database("ready_dbmate")
    run(bench.tools.dbmate(migrations, "ready_dbmate"))
    commands = {
        MIGRATOR: bench.tools.migrator(
            ini, "ready_migrator", MIGRATOR_LOG_FORMAT="json", MIGRATOR_WAIT_TIMEOUT="60"
        ),
        "dbmate --wait (1 s interval, the default)": bench.tools.dbmate(
            migrations, "ready_dbmate", "--wait"
        ),
        "dbmate --wait --wait-interval 100ms": bench.tools.dbmate(
            migrations, "ready_dbmate", "--wait", "--wait-interval", "100ms"
        ),
    }
    first_connection: dict[str, list[float]] = {name: [] for name in commands}
    connected_event: list[float] = []
    for _ in range(runs):
        for name, command in commands.items():
            bench.server.stop()
            log_start = bench.server.log_size()
            outcome: list[Finished] = []
            tool = threading.Thread(target=lambda c=command, o=outcome: o.append(run(c)))
            tool.start()
            time.sleep(down)
            bench.server.start()
            tool.join()
            events = bench.server.log_events(log_start)
            ready = next(t for t, line in events if "ready to accept connections" in line)
            seen = next(t for t, line in events if t >= ready and "connection authorized" in line)
            first_connection[name].append((seen - ready).total_seconds())
            if name == MIGRATOR:
                connected_event.append((connected_at(outcome[0].stderr) - ready).total_seconds())
    bench.say(
        f"## 3. Readiness: the tool starts, the server {down:g} s later; from the "
        "server's \"ready to accept connections\" to the tool's first connection, "
        f"{runs} runs each"
    )
    bench.say()
    bench.table(
        "| tool | to first connection (server log), ms | to own `connected` event, ms |",
        [
            f"| {name} | {spread(seen, 'ms')} | "
            + (spread(connected_event, "ms") if name == MIGRATOR else "")
            + " |"
            for name, seen in first_connection.items()
        ],
    )
    bench.say(
        f"migrator median: **{median(connected_event) * 1000:.0f} ms** to its own "
        "`connected` event (target <= 100 ms)"
    )
    bench.say()


def concurrency(bench: Bench) -> None:
    count, runs = bench.args.concurrency, bench.args.runs
    ini, _ = bench.projects[bench.small]
    bench.at_head("together", bench.small)
    commands = {
        f"{count} x {ALEMBIC}": bench.tools.alembic(ini, "together"),
        f"{count} x {MIGRATOR}": bench.tools.migrator(ini, "together"),
        f"{count} x {MIGRATOR_MANIFEST}": bench.tools.migrator(with_manifest(ini), "together"),
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for turn in range(runs + 1):  # the first turn warms up
        for name, (arguments, env) in commands.items():
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    arguments,
                    env={**TOOL_ENV, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(count)
            ]
            if any([process.wait() for process in processes]):
                raise SystemExit(f"bench: one of {name} failed")
            if turn > 0:
                walls[name].append(time.perf_counter() - started)
    bench.say(
        f"## 4. Concurrency: {count} processes started together on a database at head, {runs} runs"
    )
    bench.say()
    bench.table(
        "| processes | wall seconds, min / median / max |",
        [f"| {name} | {spread(seconds)} |" for name, seconds in walls.items()],
    )
    alembic_s, migrator_s, manifest_s = (median(seconds) for seconds in walls.values())
    bench.say(
        f"migrator / alembic: **{migrator_s / alembic_s:.3f}x** (target <= 1.1x); with the "
        f"manifest: **{manifest_s:.3f} s** (target <= 0.6 s)"
    )
    bench.say()


def memory(bench: Bench) -> None:
    bench.say(
        f"## 5. Peak memory (max RSS) applying {bench.small} revisions, the median of part 2's runs"
    )
    bench.say()
    for name, mib in bench.memory_mib.items():
        bench.say(f"- {name}: {mib:.1f} MiB")
    extra = bench.memory_mib[MIGRATOR_NO_SAFETY] - bench.memory_mib[ALEMBIC]
    with_safety = bench.memory_mib[MIGRATOR] - bench.memory_mib[ALEMBIC]
    bench.say(
        f"- migrator (`MIGRATOR_SAFETY=off`) - alembic: **{extra:+.1f} MiB** (target <= +3 MiB); "
        f"with the default's safety measurement: {with_safety:+.1f} MiB"
    )
    bench.say()


def image(bench: Bench) -> None:
    bench.say("## 6. Image")
    bench.say()
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        bench.say("Not measured: no Docker engine answers here.")
        bench.say()
        return
    picked = subprocess.run(
        [ROOT / "scripts" / "pick-base-images.sh"], check=True, capture_output=True, text=True
    ).stdout
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in picked.splitlines()
        if line.startswith("export ")
    )
    base = exports["MIGRATOR_TEST_PYTHON_IMAGE"]
    print(
        f"bench: building the image migrator:bench on {base} (about 15 s the first time)",
        file=sys.stderr,
        flush=True,
    )
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            "-t",
            "migrator:bench",
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    image_mb, base_mb = image_size_mb("migrator:bench"), image_size_mb(base)
    bench.say(
        f"- migrator:bench {image_mb:.1f} MB on base {base} {base_mb:.1f} MB: "
        f"**delta {image_mb - base_mb:.1f} MB**"
    )
    version = ["docker", "run", "--rm", "migrator:bench", "--version"]
    started = bench.alternate({"version": (version, {})}, bench.args.runs)["version"]
    bench.say(f"- `{' '.join(version)}`: {spread([f.seconds for f in started])} s")
    bench.say()


def traffic(bench: Bench) -> None:
    hold, timeout = bench.args.hold_seconds, bench.args.ddl_lock_timeout
    ini, _ = chain.write_projects(bench.work / "traffic", chain.TRAFFIC)
    cases = [
        (ALEMBIC, "traffic_alembic", bench.tools.alembic(ini, "traffic_alembic")),
        (
            f"{MIGRATOR}, MIGRATOR_DDL_LOCK_TIMEOUT={timeout:g}",
            "traffic_migrator",
            bench.tools.migrator(
                ini,
                "traffic_migrator",
                MIGRATOR_DDL_LOCK_TIMEOUT=f"{timeout:g}",
                MIGRATOR_DDL_LOCK_RETRIES="50",
            ),
        ),
    ]
    rows = []
    for name, database, command in cases:
        bench.server.fresh_database(database)
        run(bench.tools.migrator(ini, database, "upgrade", chain.revision_id(1)))
        latencies, finished = under_load(bench, database, command, hold)
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        rows.append(
            f"| {name} | {p50 * 1000:.1f} | {p99 * 1000:.0f} | **{latencies[-1] * 1000:.0f}** "
            f"| {finished.seconds:.2f} | {finished.code} |"
        )
    bench.say(
        f"## 7. Traffic: {Load.CLIENTS} clients, {Load.CLIENTS * Load.PER_SECOND} queries/s "
        f"on `traffic`; a session holds a transaction on it for {hold:g} s, and 0.5 s into "
        "it a revision adds a column"
    )
    bench.say()
    bench.table(
        "| tool | load p50 ms | load p99 ms | longest stall ms | tool's seconds | exit |",
        rows,
    )
    bench.say(
        f"Target for the migrator: longest stall <= 1.5 x {timeout:g} s = "
        f"{1.5 * timeout * 1000:.0f} ms."
    )
    bench.say()


def under_load(
    bench: Bench, database: str, command: Command, hold: float
) -> tuple[list[float], Finished]:
    """Run `command` while the load runs and a transaction holds `traffic` for `hold` s;
    returns the latencies of the queries due from the blocker's start to 1 s after the
    command ends, and the command's outcome."""
    with Load(bench.server.url(database)) as load:
        time.sleep(1.0)
        blocker = bench.server.connect(database)
        blocker.autocommit = False
        blocker.cursor().execute("SELECT count(*) FROM traffic")
        blocked_from = time.perf_counter()
        release = threading.Timer(hold, blocker.commit)
        release.start()
        time.sleep(0.5)
        finished = run(command, check=False)
        ended = time.perf_counter()
        release.join()
        blocker.close()
        time.sleep(1.0)
    return load.latencies(blocked_from, ended + 1.0), finished


def conditions(bench: Bench) -> None:
    runs = bench.args.condition_runs
    figures = {
        "lost lock to exit 7 (one session)": lambda: production.lost_lock_to_exit(
            bench.server, production.AUDITED
        ),
        "lost lock to exit 7 (env.py's own connection: the heartbeat)": lambda: (
            production.lost_lock_to_exit(bench.server, production.OWN_CONNECTION)
        ),
        "SIGTERM to exit 143, network stalled": lambda: production.sigterm_to_exit_when_stalled(
            bench.server
        ),
    }
    seconds = {name: production.repeat(measure, runs) for name, measure in figures.items()}
    small = Server(max_connections=40)
    try:
        seconds["30 runs at once, max_connections=40 (wall)"] = production.repeat(
            lambda: production.thirty_runs_on_forty_slots(small), runs
        )
    finally:
        small.destroy()
    bench.say(f"## 8. Production conditions, {runs} runs each")
    bench.say()
    bench.table(
        "| figure | seconds, min / median / max |",
        [f"| {name} | {spread(values)} |" for name, values in seconds.items()],
    )
    waiting = production.waiting_runs_cost(bench.server)
    bench.table(
        "| 30 runs waiting for the migration lock (10 s) | figure |",
        [f"| {name} | {value:.1f} |" for name, value in waiting.items()],
    )
    bench.table(
        "| one run | connections opened (server's log) |",
        [
            f"| {name} | {count} |"
            for name, count in production.connection_counts(bench.server).items()
        ],
    )


def verify(bench: Bench) -> None:
    """`migrator verify` (each revision up, down, up again, with schema snapshots, on a scratch
    database) beside the plain sum of the chain's steps: upgrade head, then downgrade base."""
    size, runs = bench.small, bench.args.runs
    ini, _ = bench.projects[size]
    bench.server.fresh_database("verified")
    up, _ = bench.tools.alembic(ini, "verified", "upgrade", "head")
    down, _ = bench.tools.alembic(ini, "verified", "downgrade", "base")
    plain = "alembic upgrade head, then downgrade base"
    results = bench.alternate(
        {
            plain: (["sh", "-c", f"{shlex.join(up)} && {shlex.join(down)}"], {}),
            "migrator verify": bench.tools.migrator(ini, "verified", "verify"),
        },
        runs,
    )
    bench.say(f"## 9. verify: {size} revisions, {runs} runs each")
    bench.say()
    bench.table(
        "| command | seconds, min / median / max |",
        [f"| {name} | {spread([f.seconds for f in done])} |" for name, done in results.items()],
    )
    plain_s = median([f.seconds for f in results[plain]])
    verify_s = median([f.seconds for f in results["migrator verify"]])
    bench.say(f"verify / plain steps: **{verify_s / plain_s:.2f}x** (target <= 3x)")
    bench.say()


def safety(bench: Bench) -> None:
    """The deploy-time safety report: the last 20 revisions of the largest chain pending,
    weighed from the effects `migrator manifest --measure` recorded where the project was
    built, beside the same upgrade with MIGRATOR_SAFETY=off (and, for scale, measured again
    at deploy on a scratch database, the old default)."""
    size, runs = bench.args.sizes[-1], bench.args.runs
    pending = min(20, size // 2)  # 20 of the real chain; half of a smoke test's tiny one
    ini, _ = bench.projects[size]
    built = ini.parent.with_name(ini.parent.name + "-measured") / ini.name
    if not built.exists():
        shutil.copytree(ini.parent, built.parent)
        bench.server.fresh_database("measuring")
        run(bench.tools.migrator(built, "measuring", "manifest", "--measure"))
    bench.server.fresh_database("weighed_template")
    start = chain.revision_id(size - pending)
    run(bench.tools.migrator(built, "weighed_template", "upgrade", start, MIGRATOR_SAFETY="off"))

    def from_template(_: str) -> None:
        admin = bench.server.connect()
        with admin.cursor() as cursor:
            cursor.execute('DROP DATABASE IF EXISTS "weighed" WITH (FORCE)')
            cursor.execute('CREATE DATABASE "weighed" TEMPLATE "weighed_template"')
        admin.close()

    off, weighed, measured = (
        "MIGRATOR_SAFETY=off",
        "MIGRATOR_SAFETY=warn (the default), weighed from the manifest",
        "MIGRATOR_SAFETY=warn, MIGRATOR_SAFETY_MEASURE=deploy",
    )
    results = bench.alternate(
        {
            off: bench.tools.migrator(built, "weighed", MIGRATOR_SAFETY="off"),
            weighed: bench.tools.migrator(built, "weighed"),
            measured: bench.tools.migrator(built, "weighed", MIGRATOR_SAFETY_MEASURE="deploy"),
        },
        runs,
        before=from_template,
    )
    bench.say(f"## 10. The safety report at deploy: {pending} of {size} revisions pending")
    bench.say()
    bench.table(
        "| migrator upgrade head | seconds, min / median / max |",
        [f"| {name} | {spread([f.seconds for f in done])} |" for name, done in results.items()],
    )
    base = median([f.seconds for f in results[off]])
    extra = median([f.seconds for f in results[weighed]]) - base
    again = median([f.seconds for f in results[measured]]) - base
    # The run's own account of the report: reading the manifest, hashing the pending files,
    # the live sizes and the weighing (its log line), free of the whole process's noise.
    inside = [weighing_seconds(f.stderr) for f in results[weighed]]
    bench.say(
        f"Weighing {pending} pending revisions' recorded effects: **{median(inside) * 1000:.0f} "
        f"ms** by the run's own clock ({spread(inside, 'ms')} ms; target <= 50 ms); whole "
        f"processes, median against median: {extra * 1000:+.0f} ms. Measuring them at deploy "
        f"instead adds {again:.2f} s."
    )
    bench.say()


def weighing_seconds(log: str) -> float:
    """The seconds the run's safety line says it spent: finding the effects in the manifest
    (the pending files hashed), the live sizes and the weighing."""
    line = next(line for line in log.splitlines() if "weighed with the live table sizes" in line)
    return float(line.rsplit(" in ", 1)[1].removesuffix(" s"))


def fleet(bench: Bench) -> None:
    """`migrator fleet` over tenant databases and schemas, beside a shell loop of single runs
    (bench/fleet.py)."""
    fleets.part(bench, BIN / "migrator", TOOL_ENV, spread)


def connected_at(json_log: str) -> datetime:
    """The time of the migrator's `connected` event, from its JSON log."""
    event = next(
        entry
        for entry in map(json.loads, json_log.splitlines())
        if entry.get("event") == "connected"
    )
    return datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def image_size_mb(image: str) -> float:
    size = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(size) / 1e6


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--sizes", default="200,1000", help="chain lengths, comma-separated; the first is also "
        "the chain of the no-op, readiness, concurrency and memory figures (200,1000)")  # fmt: skip
    add("--runs", type=int, default=5, help="runs of each timed command (5)")
    add("--readiness-runs", type=int, default=5, help="(5)")
    add("--down-seconds", type=float, default=2.0, help="server down while tools wait (2)")
    add("--concurrency", type=int, default=10, help="processes started together (10)")
    add("--hold-seconds", type=float, default=6.0, help="the blocking transaction's length (6)")
    add("--ddl-lock-timeout", type=float, default=0.5, help="the migrator's, in part 7 (0.5)")
    add("--condition-runs", type=int, default=3, help="runs of each part 8 figure (3)")
    add("--only", default=",".join(PARTS), help=f"some of {','.join(PARTS)} (all)")
    add("--output", type=Path, help="also write the report (Markdown) here")
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",")]
    args.only = args.only.split(",")
    if unknown := set(args.only) - set(PARTS):
        parser.error(f"--only: no part called {', '.join(sorted(unknown))}")
    if "memory" in args.only and "apply" not in args.only:
        parser.error("--only: memory is measured in the apply runs; add apply")
    return args


PART_FUNCTIONS: dict[str, Callable[[Bench], None]] = {part: globals()[part] for part in PARTS}


def main() -> None:
    args = arguments()
    # A stopped bench still stops its server: SystemExit runs the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    try:
        bench.header()
        for part in PARTS:
            if part in args.only:
                PART_FUNCTIONS[part](bench)
    finally:
        bench.close()
    if args.output:
        args.output.write_text("\n".join(bench.report) + "\n")


if __name__ == "__main__":
    main()
