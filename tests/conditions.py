"""Production conditions as fixtures, each on real servers and cleaned up after the test:
a second role that cannot see other sessions' details, PgBouncer in front of the server,
a network that stalls (packets dropped, no reset) and a small server (max_connections=40).

Loaded by conftest.py as a plugin (`pytest_plugins = ["conditions"]`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from conftest import PASSWORD, ROLE, Database, Server, free_port

# -- helpers ------------------------------------------------------------------------------


def as_server_user(*command: str | Path) -> list[str]:
    """PostgreSQL refuses to run as root: run it as `postgres` then."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return [*prefix, *map(str, command)]


def server_temp_dir(prefix: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    return directory


def moved(env: Mapping[str, str], host: str, port: int) -> dict[str, str]:
    """`env` pointed at another host and port (a pooler's, a proxy's): DB_*, and DATABASE_URL
    where a test of both drivers set it."""
    env = {**env, "DB_HOST": host, "DB_PORT": str(port)}
    if "DATABASE_URL" in env:
        url = sa.make_url(env["DATABASE_URL"]).set(host=host, port=port)
        env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    return env


def url_of(env: Mapping[str, str]) -> str:
    """The URL a user would write for these DB_* variables (password percent-encoded)."""
    user, password = quote(env["DB_USER"], safe=""), quote(env["DB_PASSWORD"], safe="")
    return f"postgresql://{user}:{password}@{env['DB_HOST']}:{env['DB_PORT']}/{env['DB_NAME']}"


def ipv4(host: str) -> str:
    # "localhost" may resolve to ::1 first, where a container's port need not be published.
    return socket.gethostbyname(host)


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def superuser_engine(server: Server, database: str) -> sa.Engine:
    return sa.create_engine(
        server.admin.url.set(database=database), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )


# -- another role -------------------------------------------------------------------------


@dataclass
class OtherRole:
    """A second login role, neither superuser nor pg_read_all_stats, in the same database."""

    database: Database
    name: str
    password: str = PASSWORD
    engines: list[sa.Engine] = field(default_factory=list)

    def engine(self, application_name: str) -> sa.Engine:
        url = sa.URL.create(
            "postgresql+psycopg2",
            username=self.name,
            password=self.password,
            host=self.database.env["DB_HOST"],
            port=int(self.database.env["DB_PORT"]),
            database=self.database.name,
        )
        engine = sa.create_engine(
            url, poolclass=sa.NullPool, connect_args={"application_name": application_name}
        )
        self.engines.append(engine)
        return engine


@pytest.fixture
def other_role(database: Database) -> Iterator[OtherRole]:
    """Locks held by another role: the migrator's role then sees that session's pid in
    pg_stat_activity but NULL backend_start, xact_start and state (as on managed services).
    """
    role = OtherRole(database, f"app_other_{uuid.uuid4().hex[:8]}")
    admin = database.server.admin
    in_database = superuser_engine(database.server, database.name)
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role.name} LOGIN PASSWORD '{role.password}'"))
        connection.execute(sa.text(f"GRANT CONNECT ON DATABASE {database.name} TO {role.name}"))
    with in_database.connect() as connection:
        connection.execute(sa.text(f"GRANT USAGE, CREATE ON SCHEMA public TO {role.name}"))
    try:
        yield role
    finally:
        for engine in role.engines:
            engine.dispose()
        with admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                    " WHERE usename = :name"
                ),
                {"name": role.name},
            )
        with in_database.connect() as connection:
            connection.execute(sa.text(f"DROP OWNED BY {role.name}"))
        in_database.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE {role.name}"))


# -- PgBouncer ----------------------------------------------------------------------------


@dataclass
class Bouncer:
    """A running PgBouncer in front of one database."""

    database: Database
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return moved(self.database.env, self.host, self.port)

    @property
    def url(self) -> str:
        return url_of(self.env)

    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")


def auth_file_line(user: str, password: str) -> str:
    # Fields are double-quoted; a double quote inside one is written twice.
    return '"{}" "{}"\n'.format(user.replace('"', '""'), password.replace('"', '""'))


@pytest.fixture
def pgbouncer() -> Iterator[Callable[..., Bouncer]]:
    """PgBouncer as production runs it (Debian's package, SCRAM): transaction pooling hands
    one client's statements to different server sessions, and `options` is often ignored.
    """
    assert shutil.which("pgbouncer"), "pgbouncer is missing: scripts/test.sh installs it"
    started: list[Bouncer] = []

    def start(
        database: Database,
        mode: str = "transaction",
        pool_size: int = 5,
        ignore_options: bool = True,
    ) -> Bouncer:
        assert mode in ("transaction", "session"), mode
        directory = server_temp_dir("migrator-pgbouncer-")
        port = free_port()
        ignored = "extra_float_digits,options" if ignore_options else "extra_float_digits"
        target = f"host={ipv4(database.env['DB_HOST'])} port={database.env['DB_PORT']}"
        (directory / "users.txt").write_text(auth_file_line(ROLE, PASSWORD))
        (directory / "pgbouncer.ini").write_text(
            f"[databases]\n{database.name} = {target} dbname={database.name}\n\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"unix_socket_dir = {directory}\n"
            f"auth_type = scram-sha-256\nauth_file = {directory / 'users.txt'}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
            f"ignore_startup_parameters = {ignored}\nquery_wait_timeout = 30\n"
        )
        for path in directory.iterdir():
            if os.geteuid() == 0:
                shutil.chown(path, "postgres")
        with open(directory / "pgbouncer.log", "wb") as log:
            # It refuses root too. Not runuser here: it forwards SIGTERM, then sleeps 2 s.
            root = os.geteuid() == 0
            process = subprocess.Popen(
                ["pgbouncer", directory / "pgbouncer.ini"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user="postgres" if root else None,
                group="postgres" if root else None,
                extra_groups=[] if root else None,
            )
        bouncer = Bouncer(database, "127.0.0.1", port, directory, process)
        started.append(bouncer)
        try:
            wait_for_port(port, process, timeout=10)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"pgbouncer did not start: {error}\n{bouncer.log()}") from None
        return bouncer

    yield start
    for bouncer in started:
        stop_process(bouncer.process)
        shutil.rmtree(bouncer.directory, ignore_errors=True)


# -- a stalled network --------------------------------------------------------------------


def iptables_command() -> list[str]:
    """The first iptables front end that works here (nf_tables or legacy)."""
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for name in ("iptables", "iptables-nft", "iptables-legacy"):
        command = [*prefix, name, "-w"]
        if (
            shutil.which(name)
            and subprocess.run([*command, "-L", "INPUT", "-n"], capture_output=True).returncode == 0
        ):
            return command
    raise AssertionError("no working iptables: scripts/test.sh installs it; this needs root")


class Proxy:
    """A TCP proxy in threads of the test process; stall() has the kernel drop every packet
    between the clients and the proxy (no reset), as a stalled network does.
    """

    def __init__(self, env: Mapping[str, str] | None, target: tuple[str, int]) -> None:
        self._env, self.target = env, target
        self._iptables = iptables_command()
        self._rules: list[list[str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.host, self.port = "127.0.0.1", int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._forwarding = threading.Event()
        self._forwarding.set()
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    @property
    def env(self) -> dict[str, str]:
        assert self._env is not None, "a proxy to a bare host and port has no DB_* variables"
        return moved(self._env, self.host, self.port)

    @property
    def url(self) -> str:
        return url_of(self.env)

    def stall(self) -> None:
        if self._rules:
            return
        for direction in ("--dport", "--sport"):
            rule = ["INPUT", "-i", "lo", "-p", "tcp", direction, str(self.port), "-j", "DROP"]
            subprocess.run([*self._iptables, "-I", *rule], check=True, capture_output=True)
            self._rules.append(rule)

    def wedge(self) -> None:
        """Stop forwarding, keeping every socket open: the kernel still acknowledges what
        the client sends, and keepalives pass (a userspace proxy, PgBouncer, a cloud SQL
        proxy that hangs)."""
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()
        while self._rules:
            rule = self._rules.pop()
            subprocess.run([*self._iptables, "-D", *rule], check=True, capture_output=True)

    def close(self) -> None:
        self.resume()  # never leave a DROP rule behind, whoever closes the proxy
        self._closed = True
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._forwarding.wait()
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def stall_proxy() -> Iterator[Callable[[Any], Proxy]]:
    """A network that stops answering without closing anything (a dead NAT entry, a cut
    link): only TCP keepalives or timeouts notice it. start() takes a Database, a Bouncer
    (anything with .env) or a (host, port) pair.
    """
    started: list[Proxy] = []

    def start(target: Database | Bouncer | tuple[str, int]) -> Proxy:
        if isinstance(target, tuple):
            proxy = Proxy(None, (ipv4(target[0]), target[1]))
        else:
            env = target.env
            proxy = Proxy(env, (ipv4(env["DB_HOST"]), int(env["DB_PORT"])))
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            try:
                proxy.resume()
            finally:
                proxy.close()


# -- a small server -----------------------------------------------------------------------


def server_binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries are missing: scripts/test.sh installs them"
    return Path(found[-1]).parent


@dataclass
class SmallServer(Database):
    """A Database on a local server of its own; query() runs as its superuser."""

    socket_dir: Path = Path()

    def restart(self) -> None:
        """A fast restart (pg_ctl restart -m fast): every session ends, the server is back
        within a second or two, as after a minor version upgrade or a failover."""
        # Its log to a file: the new server would otherwise hold our pipes open.
        directory = self.socket_dir
        subprocess.run(
            as_server_user(
                server_binaries() / "pg_ctl",
                *("-D", directory / "data", "-l", directory / "log", "-m", "fast", "-w"),
                "restart",
            ),
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def superuser_connection(self) -> sa.Connection:
        """A session of the superuser in this database, left open (to hold a lock); a
        restart ends it."""
        engine = sa.create_engine(
            "postgresql+psycopg2://",
            poolclass=sa.NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "host": str(self.socket_dir),
                "port": self.server.port,
                "user": "postgres",
                "dbname": self.name,
            },
        )
        return engine.connect()

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = sa.create_engine(
            "postgresql+psycopg2://",
            poolclass=sa.NullPool,
            connect_args={
                "host": str(self.socket_dir),
                "port": self.server.port,
                "user": "postgres",
                "dbname": self.name,
            },
        )
        try:
            with engine.begin() as connection:
                result = connection.execute(sa.text(sql), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()


SMALL_MAX_CONNECTIONS = 40


@pytest.fixture
def small_server() -> Iterator[SmallServer]:
    """A server with max_connections=40 (3 of them reserved for superusers), as small
    managed plans have: function scoped, so sessions a test leaves behind cannot starve the
    next one. ROLE logs in over TCP with SCRAM; query() is the superuser over the socket.
    """
    binaries = server_binaries()
    directory = server_temp_dir("migrator-small-")
    data = directory / "data"
    subprocess.run(
        as_server_user(binaries / "initdb", "-D", data, "-U", "postgres", "--no-sync"),
        check=True,
        capture_output=True,
    )
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    port = free_port()
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        f" -c max_connections={SMALL_MAX_CONNECTIONS}"
    )
    subprocess.run(
        as_server_user(
            binaries / "pg_ctl", "-D", data, "-o", options, "-l", directory / "log", "-w", "start"
        ),
        check=True,
        capture_output=True,
    )
    admin = sa.create_engine(
        "postgresql+psycopg2://",
        isolation_level="AUTOCOMMIT",
        connect_args={"host": str(directory), "port": port, "user": "postgres"},
    )
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'"))
            connection.execute(sa.text(f"CREATE DATABASE {name} OWNER {ROLE}"))
        yield SmallServer(Server("127.0.0.1", port, admin, ""), name, socket_dir=directory)
    finally:
        admin.dispose()
        subprocess.run(
            as_server_user(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)
