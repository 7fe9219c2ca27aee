"""A throwaway PostgreSQL for the benchmarks: Debian's server binaries on loopback.

Trust authentication on 127.0.0.1 only, so no password is needed or printed. Every server
log line starts with its millisecond UTC timestamp and connections are logged: the
readiness figures read both.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import psycopg2


def server_binaries() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise SystemExit(
            "bench: PostgreSQL's server binaries are missing: apt-get install postgresql"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, max_connections: int = 100) -> None:
        self.bin = server_binaries()
        self.home = Path(tempfile.mkdtemp(prefix="migrator-bench-"))
        self.data = self.home / "data"
        self.log = self.home / "server.log"
        self.port = free_port()
        # The server refuses to run as root.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if self.run_as:
            shutil.chown(self.home, "postgres")
        self._as_owner("initdb", "-D", str(self.data), "-U", "bench", "--auth=trust")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.home),
            "log_line_prefix": "%m ",
            "log_timezone": "UTC",
            "log_connections": "on",
            "max_connections": str(max_connections),
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())
        self.start()

    def _as_owner(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bin / program), *args], check=True, capture_output=True
        )

    def start(self, wait: bool = True) -> None:
        flags = ["-w"] if wait else ["-W"]
        self._as_owner("pg_ctl", "-D", str(self.data), "-l", str(self.log), *flags, "start")

    def stop(self) -> None:
        self._as_owner("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://bench@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg2.extensions.connection:
        connection = psycopg2.connect(self.url(database))
        connection.autocommit = True
        return connection

    def fresh_database(self, name: str) -> str:
        """An empty database called `name` (dropped first if it exists); returns its URL."""
        admin = self.connect()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        return self.url(name)

    def log_events(self, since: int) -> list[tuple[datetime, str]]:
        """(timestamp, message) for each server log line written after byte offset `since`."""
        events = []
        with self.log.open(encoding="utf-8", errors="replace") as lines:
            lines.seek(since)
            for line in lines:
                stamp, _, message = line.partition(" UTC ")
                try:
                    moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
                except ValueError:
                    continue  # a continuation line
                events.append((moment.replace(tzinfo=UTC), message.strip()))
        return events

    def log_size(self) -> int:
        return self.log.stat().st_size
