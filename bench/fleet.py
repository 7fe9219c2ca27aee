"""Fleets, timed (issue 17): `migrator fleet upgrade head` over many tenants of the example
project (the repository's alembic.ini, 4 revisions), beside the shell loop users write today,
one `migrator upgrade head` process per database, one after another.

- 200 fresh tenant databases: the fleet (MIGRATOR_FLEET_PARALLELISM=4) and the loop take
  turns, each on 200 databases of its own, dropped and created again before every run (not
  timed). The loop keeps MIGRATOR_SAFETY's default (warn: each run weighs its revisions'
  effects recorded where the project was built; this project records none, so a note names
  them and nothing is measured at deploy); the fleet turns it off for its targets. The
  loop's own log tells any seconds it spent measuring on a scratch database
  (MIGRATOR_SAFETY_MEASURE=deploy, the default before), and the ratio is also given without
  them;
- the same 200 databases, now at head: the fleet again (at least 3 runs: they are cheap);
- 1,000 fresh tenant schemas (`schema=NAME`) in one database: the fleet once, its whole
  process tree's memory sampled from /proc meanwhile (the fleet, its forkserver and resource
  tracker, every target's process).

run.py prints the figures (part `fleet`). Every database made here is dropped at the end.
BENCH_FLEET_DATABASES and BENCH_FLEET_SCHEMAS shrink the fleets (tests/test_bench.py's
smoke run); the issue's targets are stated for the defaults.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from server import Server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "alembic.ini"
DATABASES = int(os.environ.get("BENCH_FLEET_DATABASES", "200"))
SCHEMAS = int(os.environ.get("BENCH_FLEET_SCHEMAS", "1000"))
PARALLELISM = 4
AT_HEAD_RUNS = 3  # at least: runs at head are cheap
SAMPLE_SECONDS = 0.05
SAFETY_MEASURED = re.compile(r"measured on a scratch database in ([0-9.]+) s")
FLEET_PREFIX, LOOP_PREFIX, SCHEMA_HOME = "fleet_tenant", "loop_tenant", "fleet_schemas"


def say(line: str) -> None:
    """Progress, on stderr: the report itself is what run.py prints."""
    print(f"bench: fleet: {line}", file=sys.stderr, flush=True)


def head() -> str:
    return str(ScriptDirectory.from_config(Config(str(EXAMPLE))).get_current_head())


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}_{number:04d}" for number in range(count)]


def recreate(server: Server, databases: Sequence[str]) -> None:
    admin = server.connect()
    with admin.cursor() as cursor:
        for name in databases:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


def drop(server: Server, databases: Sequence[str]) -> None:
    admin = server.connect()
    with admin.cursor() as cursor:
        for name in databases:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def check_databases(server: Server, databases: Sequence[str], wanted: str) -> None:
    """That every database holds exactly the wanted revision."""
    for name in databases:
        connection = server.connect(name)
        with connection.cursor() as cursor:
            cursor.execute("SELECT version_num FROM alembic_version")
            versions = [row[0] for row in cursor.fetchall()]
        connection.close()
        if versions != [wanted]:
            raise SystemExit(f"bench: database {name} is at {versions}, not {wanted}")


def check_schemas(server: Server, home: str, schemas: Sequence[str], wanted: str) -> None:
    connection = server.connect(home)
    with connection.cursor() as cursor:
        for schema in schemas:
            cursor.execute(f"SELECT version_num FROM {schema}.alembic_version")
            versions = [row[0] for row in cursor.fetchall()]
            if versions != [wanted]:
                raise SystemExit(f"bench: schema {schema} is at {versions}, not {wanted}")
    connection.close()


@dataclass
class Tree:
    """Peak memory of a process and all its descendants, from /proc every SAMPLE_SECONDS.

    Summed RSS counts the pages forked processes share once per process; summed PSS divides
    them among the sharers. Each process's own peak is its VmHWM, exact between samples."""

    root: int
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    samples: int = 0
    processes: int = 0
    own_peaks: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid: (role, VmHWM)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Tree:
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path("/proc", entry.name, "stat").read_bytes()
                except OSError:
                    continue  # gone meanwhile
                parent = int(stat.rsplit(b")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        rss = pss = 0
        tree, parents = [self.root], {self.root: 0}
        for pid in tree:
            for child in children.get(pid, []):
                parents[child] = pid
                tree.append(child)
        for pid in tree:
            status = _fields(f"/proc/{pid}/status", ("VmRSS:", "VmHWM:"))
            if not status:
                continue  # gone, or a zombie
            rss += status["VmRSS:"]
            pss += _fields(f"/proc/{pid}/smaps_rollup", ("Pss:",)).get("Pss:", 0)
            role = self.own_peaks.get(pid, (self._role(pid, parents), 0))[0]
            self.own_peaks[pid] = (role, status["VmHWM:"])
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.samples += 1

    def _role(self, pid: int, parents: Mapping[int, int]) -> str:
        if pid == self.root:
            return "fleet"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            command = b""
        if parents.get(pid) == self.root:
            if b"resource_tracker" in command:
                return "resource tracker"
            return "forkserver" if b"forkserver" in command else "other"
        # Forked by the forkserver (whose command line it keeps): a target's run.
        return "target" if self.own_peaks.get(parents[pid], ("",))[0] == "forkserver" else "other"

    def peak_of(self, role: str) -> int:
        return max((peak for each, peak in self.own_peaks.values() if each == role), default=0)


def _fields(path: str, names: Sequence[str]) -> dict[str, int]:
    """The kB values of some lines of a /proc file: {} when the process is gone."""
    found: dict[str, int] = {}
    try:
        with open(path, "rb") as lines:
            for line in lines:
                name = line.split(maxsplit=1)[0].decode()
                if name in names:
                    found[name] = int(line.split()[1])
    except (OSError, IndexError):
        return {}
    return found


@dataclass
class Fleets:
    server: Server
    migrator: Path  # the venv's console script
    env: Mapping[str, str]  # the tools' environment (run.py's TOOL_ENV)
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-fleet-")))

    def targets(self, lines: Sequence[str]) -> Path:
        path = self.scratch / "targets"
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return path

    def fleet(self, database: str, lines: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        return [str(self.migrator), "fleet", "upgrade", "head"], {
            **self.env,
            "DATABASE_URL": self.server.url(database),
            "MIGRATOR_CONFIG": str(EXAMPLE),
            "MIGRATOR_FLEET_FILE": str(self.targets(lines)),
            "MIGRATOR_FLEET_PARALLELISM": str(PARALLELISM),
        }

    def loop(self, databases: Sequence[str], **extra: str) -> tuple[list[str], dict[str, str]]:
        """The shell loop, as users write it: DB_* settings, a process per database."""
        listing = self.scratch / "databases"
        listing.write_text("".join(f"{name}\n" for name in databases), encoding="utf-8")
        script = 'for db in $(cat "$1"); do DB_NAME=$db migrator upgrade head || exit; done'
        return ["sh", "-c", script, "sh", str(listing)], {
            **self.env,
            "PATH": f"{self.migrator.parent}{os.pathsep}{self.env.get('PATH', '')}",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(self.server.port),
            "DB_USER": "bench",
            "MIGRATOR_CONFIG": str(EXAMPLE),
            **extra,
        }

    def timed(
        self, command: tuple[list[str], dict[str, str]], watch: Callable[[int], Any] | None = None
    ) -> float:
        """Wall seconds of the command, its stdout discarded; `watch(pid)` is entered (a
        context manager) while it runs."""
        arguments, env = command
        with (self.scratch / "stderr").open("w+") as errors:
            started = time.perf_counter()
            process = subprocess.Popen(
                arguments, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=errors
            )
            try:
                if watch is None:
                    code = process.wait()
                else:
                    with watch(process.pid):
                        code = process.wait()
            except BaseException:  # the bench stopped: so is the command, before clean-up
                process.kill()
                process.wait()
                raise
            seconds = time.perf_counter() - started
            if code != 0:
                errors.seek(0)
                raise SystemExit(
                    f"bench: {' '.join(arguments)} exited {code}:\n{errors.read()[-4000:]}"
                )
        return seconds


@dataclass
class Figures:
    databases: int
    schemas: int
    fleet: list[float]
    loop: list[float]
    loop_safety: list[float]  # of which measuring safety on scratch databases (its log)
    at_head: list[float]
    schemas_seconds: float
    tree: Tree


def measure(server: Server, migrator: Path, env: Mapping[str, str], runs: int) -> Figures:
    """Every figure of the part; the databases made are dropped whatever happens."""
    fleets = Fleets(server, migrator, env)
    fleet_databases = names(FLEET_PREFIX, DATABASES)
    loop_databases = names(LOOP_PREFIX, DATABASES)
    schemas = names("tenant", SCHEMAS)
    wanted = head()
    try:
        # A first, unmeasured run warms the page cache and the bytecode.
        recreate(server, ["fleet_warm_up"])
        fleets.timed(fleets.loop(["fleet_warm_up"]))
        fleet_seconds, loop_seconds, loop_safety = [], [], []
        for turn in range(1, runs + 1):
            say(f"run {turn} of {runs}: {DATABASES} databases, fleet, then loop")
            recreate(server, fleet_databases)
            fleet_seconds.append(fleets.timed(fleets.fleet("postgres", fleet_databases)))
            check_databases(server, fleet_databases, wanted)
            recreate(server, loop_databases)
            loop_seconds.append(fleets.timed(fleets.loop(loop_databases)))
            check_databases(server, loop_databases, wanted)
            log = (fleets.scratch / "stderr").read_text(encoding="utf-8", errors="replace")
            loop_safety.append(sum(map(float, SAFETY_MEASURED.findall(log))))
        drop(server, loop_databases)
        at_head_runs = max(runs, AT_HEAD_RUNS)
        say(f"{DATABASES} databases at head, {at_head_runs} runs")
        at_head = [
            fleets.timed(fleets.fleet("postgres", fleet_databases)) for _ in range(at_head_runs)
        ]
        drop(server, fleet_databases)
        say(f"{SCHEMAS} schemas")
        recreate(server, [SCHEMA_HOME])
        connection = server.connect(SCHEMA_HOME)
        with connection.cursor() as cursor:
            cursor.execute("".join(f"CREATE SCHEMA {schema};" for schema in schemas))
        connection.close()
        watched: list[Tree] = []

        def watch(pid: int) -> Tree:
            watched.append(Tree(pid))
            return watched[-1]

        command = fleets.fleet(SCHEMA_HOME, [f"schema={schema}" for schema in schemas])
        schemas_seconds = fleets.timed(command, watch)
        check_schemas(server, SCHEMA_HOME, schemas, wanted)
        return Figures(
            DATABASES,
            SCHEMAS,
            fleet_seconds,
            loop_seconds,
            loop_safety,
            at_head,
            schemas_seconds,
            watched[0],
        )
    finally:
        drop(server, ["fleet_warm_up", SCHEMA_HOME, *fleet_databases, *loop_databases])
        for path in fleets.scratch.iterdir():
            path.unlink()
        fleets.scratch.rmdir()


def part(bench: Any, migrator: Path, env: Mapping[str, str], spread: Callable[..., str]) -> None:
    """Measure, then print the figures through run.py's Bench (`say`, `table`)."""
    runs = bench.args.runs
    started = time.perf_counter()
    figures = measure(bench.server, migrator, env, runs)
    fleet_s, loop_s = median(figures.fleet), median(figures.loop)
    safety_s = median(figures.loop_safety)
    databases, schemas = figures.databases, figures.schemas
    bench.say(
        f"## 11. Fleets: `migrator fleet upgrade head`, {PARALLELISM} at a time, over tenants "
        f"of the example project ({EXAMPLE.name}, {len(revisions())} revisions); "
        f"{os.cpu_count()} CPUs"
    )
    bench.say()
    bench.say(
        "The loop is `for db in ...; do DB_NAME=$db migrator upgrade head; done`: one process "
        "per database, one after another. Each measured run starts from databases created "
        "afresh (not timed); the fleet and the loop take turns, each on databases of its own. "
        "The loop's runs keep MIGRATOR_SAFETY's default (warn: the revisions' effects "
        "recorded at build are weighed; this project records none, so nothing is measured at "
        "deploy); the fleet turns it off for its targets."
    )
    bench.say()
    bench.table(
        "| command | runs | wall seconds, min / median / max | per tenant, median ms |",
        [
            f"| {databases} fresh databases: `migrator fleet upgrade head` | {runs} | "
            f"{spread(figures.fleet)} | {fleet_s / databases * 1000:.0f} |",
            f"| {databases} fresh databases: the shell loop | {runs} | "
            f"{spread(figures.loop)} | {loop_s / databases * 1000:.0f} |",
            f"| of which the loop's safety measurements (its log) | {runs} | "
            f"{spread(figures.loop_safety)} | {safety_s / databases * 1000:.0f} |",
            f"| {databases} databases at head: `migrator fleet upgrade head` | "
            f"{len(figures.at_head)} | "
            f"{spread(figures.at_head)} | {median(figures.at_head) / databases * 1000:.0f} |",
            f"| {schemas} fresh schemas (`schema=NAME`, one database): "
            f"`migrator fleet upgrade head` | 1 | {figures.schemas_seconds:.3f} | "
            f"{figures.schemas_seconds / schemas * 1000:.0f} |",
        ],
    )
    tree = figures.tree
    bench.say(
        f"- fleet vs loop, {databases} fresh databases: **{loop_s / fleet_s:.2f}x faster** "
        f"({fleet_s:.1f} s vs {loop_s:.1f} s, medians; target >= 4x); without the loop's "
        f"safety measurements ({safety_s:.1f} s), the same work as the fleet's: "
        f"**{(loop_s - safety_s) / fleet_s:.2f}x**"
    )
    bench.say(
        f"- {databases} databases at head: **{median(figures.at_head):.2f} s** (median; "
        "target < 5 s)"
    )
    bench.say(
        f"- {schemas} schemas, peak memory of the fleet's whole process tree (sampled every "
        f"{SAMPLE_SECONDS * 1000:.0f} ms, {tree.samples} samples, {len(tree.own_peaks)} "
        f"processes): summed RSS **{tree.peak_rss_kib / 1024:.1f} MiB**, summed PSS "
        f"{tree.peak_pss_kib / 1024:.1f} MiB (pages shared after fork counted once)"
    )
    largest_pid = max(tree.own_peaks, key=lambda pid: tree.own_peaks[pid][1], default=None)
    if largest_pid is not None:
        role, peak = tree.own_peaks[largest_pid]
        bench.say(
            f"- largest single process: **{peak / 1024:.1f} MiB** (its VmHWM; the {role}); "
            + ", ".join(
                f"{each} {tree.peak_of(each) / 1024:.1f} MiB"
                for each in ("fleet", "forkserver", "target")
            )
            + " (a target: the largest of them)"
        )
    bench.say(f"- the part took {time.perf_counter() - started:.0f} s")
    bench.say()


def revisions() -> list[str]:
    script = ScriptDirectory.from_config(Config(str(EXAMPLE)))
    return [revision.revision for revision in script.walk_revisions()]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
