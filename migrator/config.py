"""Settings: environment variables and command-line flags, validated before anything connects.

Every bad value is a UsageError (exit 2) naming the variable; no value of a secret is ever echoed.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrator.errors import UsageError
from migrator.masking import passwords_in

if TYPE_CHECKING:
    # Imported where a URL is parsed: a run that needs no URL object (the no-op fast path,
    # migrator/fast.py) must not pay for importing SQLAlchemy.
    from sqlalchemy.engine import URL

# Commands a Job can ask for through MIGRATOR_COMMAND (it passes no arguments).
ENVIRONMENT_COMMANDS = ("upgrade", "downgrade", "current", "history", "check", "verify", "wait")
# Commands that run to a target revision.
TARGETED_COMMANDS = ("upgrade", "downgrade", "plan", "verify", "stamp")
DEFAULT_TARGET = "head"
# Where the image looks for a project (the Dockerfile's MIGRATOR_CONFIG).
IMAGE_PROJECT = Path("/project/alembic.ini")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SAFETY_MODES = ("off", "warn", "block")  # MIGRATOR_SAFETY: what upgrade does with the report
# MIGRATOR_SAFETY_MEASURE: where the effects weighed come from. `build`: the manifest's,
# measured where the project is built (`verify`); `deploy`: measured again at deploy, on a
# scratch database made on the server being migrated (the old way, opt-in).
SAFETY_MEASURES = ("build", "deploy")
# MIGRATOR_ON_CHANGED_REVISION: what a run does when an applied revision's file was edited.
ON_CHANGED_REVISION = ("stop", "warn")
PHASES = ("pre", "post")  # MIGRATOR_PHASE: which half of an expand/contract deploy (phases.py)
KEEPALIVES = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
# The drivers the migrator runs on (synchronous, libpq-based): psycopg 3 and psycopg2.
DRIVERS = ("psycopg", "psycopg2")
# How a yes-or-no value is written (any case): the MIGRATOR_ALLOW_* settings, the action's
# inputs (action/entrypoint.py).
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits: int() takes "٣", and fails on "²"
# PostgreSQL keeps statement_timeout and lock_timeout as an int of milliseconds.
POSTGRES_TIMEOUT_LIMIT = (2**31 - 1) / 1000
LIBPQ_CONNECT_TIMEOUT_LIMIT = 2**31 - 1  # libpq's connect_timeout is an int of seconds
# TCP keepalives (a third of it) allow no idle time longer than 32767 s: a day fits.
NETWORK_TIMEOUT_LIMIT = 86_400
# What a connection can carry: PostgreSQL cuts a longer name (user, database) to 63 bytes,
# DNS resolves no host name longer than 253 characters, a startup packet holds 10000 bytes.
NAME_LIMIT = 63
HOST_LIMIT = 253
URL_LIMIT = 10_000
_TARGET_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@+-:.")


@dataclass(frozen=True)
class Settings:
    database_url: URL | None
    alembic_ini: Path
    wait_timeout: float
    connect_timeout: int
    network_timeout: int
    lock_timeout: float
    statement_timeout: float | None
    ddl_lock_timeout: float | None
    ddl_lock_retries: int
    log_format: str
    log_level: str
    allow_downgrade: bool
    allow_unknown_revision: bool
    termination_log: Path
    summary_file: Path | None
    verify_url: URL | None
    passwords: tuple[str, ...]  # every password the configuration carries, to hide
    safety: str = "warn"
    safety_measure: str = "build"
    # A finding on a table with this many live rows is a warning, an error (migrator.safety).
    safety_warn_rows: int = 10_000
    safety_error_rows: int = 100_000
    # A schema target of a fleet: search_path set to it, a migration lock of its own.
    schema: str | None = None
    # The deploy ledger: what a run does with an edited applied revision, and who runs it.
    on_changed_revision: str = "stop"
    host: str = ""
    deploy_id: str | None = None
    # The tenant every log line names (`fleet` sets it for each target it runs).
    tenant: str | None = None
    # An upgrade's deploy phase: pre (before the rollout) or post (after it); None: both.
    phase: str | None = None

    def masked_url(self) -> str:
        if self.database_url is None:
            return "(no database configured)"
        return self.database_url.render_as_string(hide_password=True)

    def connection_url(self) -> URL:
        """The URL every connection uses, Alembic's own included.

        libpq parameters ride in the query string so that a standard env.py, which builds
        its own engine from `sqlalchemy.url`, gets the same name and timeouts as we do.
        """
        if self.database_url is None:
            raise UsageError(
                "no database configured: set DATABASE_URL (or DATABASE_URL_FILE), "
                "or DB_HOST, DB_NAME and DB_USER"
            )
        url = self.database_url
        query = self.libpq_defaults(url.query)
        options = [str(url.query["options"])] if "options" in url.query else []
        if self.statement_timeout is not None:
            options.append(f"-c statement_timeout={milliseconds(self.statement_timeout)}")
        if self.ddl_lock_timeout is not None:
            options.append(f"-c lock_timeout={milliseconds(self.ddl_lock_timeout)}")
        if self.schema is not None:
            options.append(f"-c search_path={_option_value(search_path(self.schema))}")
        if options:
            query["options"] = " ".join(options)
        return url.update_query_dict(query)

    def libpq_defaults(self, given: Mapping[str, object]) -> dict[str, str]:
        """The libpq parameters every connection gets, but for those `given` already sets."""
        defaults: dict[str, str] = {}
        if "application_name" not in given:
            # Names this run in pg_stat_activity, so a waiting run can say who holds the lock.
            defaults["application_name"] = f"migrator@{socket.gethostname()}"[:63]
        if "connect_timeout" not in given:
            defaults["connect_timeout"] = str(self.connect_timeout)
        if "client_encoding" not in given:
            # Text as UTF-8 whatever the database's encoding: psycopg 3 hands an SQL_ASCII
            # database's text back as bytes (SQLAlchemy's own version check then fails).
            defaults["client_encoding"] = "UTF8"
        if not any(name in given for name in KEEPALIVES):
            # A stalled network (packets dropped, no reset) ends the connection within
            # MIGRATOR_NETWORK_TIMEOUT instead of never: libpq's TCP keepalives and
            # tcp_user_timeout bound both a silent server and unacknowledged sends.
            defaults.update(self.keepalives())
        return defaults

    def keepalives(self) -> dict[str, str]:
        """TCP keepalive and user-timeout values that give up on a peer within the network
        timeout; libpq's parameter names (the server's own settings take the same values)."""
        seconds = self.network_timeout
        return {
            "keepalives": "1",
            "keepalives_idle": str(max(1, seconds // 3)),
            "keepalives_interval": str(max(1, seconds // 6)),
            "keepalives_count": "3",
            "tcp_user_timeout": str(seconds * 1000),
        }


def load_settings(
    environ: Mapping[str, str], flags: Mapping[str, str | None], *, urls: bool = True
) -> Settings:
    """Read settings; `flags` maps an environment variable's name to its command-line value.

    Without `urls`, the database URLs are left unparsed (None): for the no-op fast path,
    which must not import SQLAlchemy; it reads them with `database_url_text` and
    `database_parts`."""
    values = _Values(environ, flags)
    database_url = _database_url(values) if urls else None
    verify_url = _verify_url(values) if urls else None
    return Settings(
        database_url=database_url,
        alembic_ini=_alembic_ini(values),
        wait_timeout=_seconds(values, "MIGRATOR_WAIT_TIMEOUT", 60.0),
        connect_timeout=_whole_seconds(
            values, "MIGRATOR_CONNECT_TIMEOUT", 5, LIBPQ_CONNECT_TIMEOUT_LIMIT
        ),
        network_timeout=_whole_seconds(
            values, "MIGRATOR_NETWORK_TIMEOUT", 30, NETWORK_TIMEOUT_LIMIT
        ),
        lock_timeout=_seconds(values, "MIGRATOR_LOCK_TIMEOUT", 300.0),
        statement_timeout=_optional_seconds(values, "MIGRATOR_STATEMENT_TIMEOUT"),
        ddl_lock_timeout=_optional_seconds(values, "MIGRATOR_DDL_LOCK_TIMEOUT"),
        ddl_lock_retries=_count(values, "MIGRATOR_DDL_LOCK_RETRIES", 5),
        log_format=_choice(values, "MIGRATOR_LOG_FORMAT", LOG_FORMATS, "text"),
        log_level=_choice(values, "MIGRATOR_LOG_LEVEL", LOG_LEVELS, "INFO", upper=True),
        allow_downgrade=_flag(values, "MIGRATOR_ALLOW_DOWNGRADE"),
        allow_unknown_revision=_flag(values, "MIGRATOR_ALLOW_UNKNOWN_REVISION"),
        termination_log=Path(values.raw("MIGRATOR_TERMINATION_LOG") or "/dev/termination-log"),
        summary_file=_optional_path(values, "MIGRATOR_SUMMARY_FILE"),
        verify_url=verify_url,
        passwords=(*passwords_in(database_url), *passwords_in(verify_url)),
        safety=_choice(values, "MIGRATOR_SAFETY", SAFETY_MODES, "warn"),
        safety_measure=_choice(values, "MIGRATOR_SAFETY_MEASURE", SAFETY_MEASURES, "build"),
        safety_warn_rows=_count(values, "MIGRATOR_SAFETY_WARN_ROWS", 10_000),
        safety_error_rows=_count(values, "MIGRATOR_SAFETY_ERROR_ROWS", 100_000),
        schema=_optional_schema(values),
        tenant=values.raw("MIGRATOR_TENANT"),
        on_changed_revision=_choice(
            values, "MIGRATOR_ON_CHANGED_REVISION", ON_CHANGED_REVISION, "stop"
        ),
        # A Kubernetes pod's hostname is its name; elsewhere the machine's.
        host=values.raw("HOSTNAME") or socket.gethostname(),
        deploy_id=_deploy_id(values),
        phase=None
        if values.raw("MIGRATOR_PHASE") is None
        else _choice(values, "MIGRATOR_PHASE", PHASES, "pre"),
    )


def _deploy_id(values: _Values) -> str | None:
    """MIGRATOR_DEPLOY_ID (the chart sets it to its release, revision and image), else the
    GitHub Actions run's repository, commit and run id, else none."""
    given = (values.raw("MIGRATOR_DEPLOY_ID") or "").strip()
    if given:
        return given
    repository = values.raw("GITHUB_REPOSITORY")
    if values.raw("GITHUB_ACTIONS") == "true" and repository:
        commit = (values.raw("GITHUB_SHA") or "")[:12]
        return f"github {repository}@{commit} run {values.raw('GITHUB_RUN_ID') or '?'}"
    return None


@dataclass(frozen=True)
class FleetSettings:
    """`migrator fleet`: where the targets are, and how many to run at once."""

    targets_file: Path
    parallelism: int
    canary: int
    max_failures: int
    shards: int
    shard: int  # this pod's share: the targets whose position modulo `shards` is `shard`


def load_fleet_settings(environ: Mapping[str, str], directory: Path) -> FleetSettings:
    """`fleet`'s settings; a relative MIGRATOR_FLEET_FILE is in `directory`."""
    values = _Values(environ, {})
    raw_file = values.raw("MIGRATOR_FLEET_FILE")
    if raw_file is None:
        raise UsageError("MIGRATOR_FLEET_FILE: required for `fleet` (one target per line)")
    shards = _at_least_one(values, "MIGRATOR_FLEET_SHARDS", 1)
    shard = _count(values, "JOB_COMPLETION_INDEX", 0)
    if shard >= shards:
        raise UsageError(
            f"JOB_COMPLETION_INDEX: {shard} is not below MIGRATOR_FLEET_SHARDS ({shards}); "
            "set MIGRATOR_FLEET_SHARDS to the Job's completions"
        )
    return FleetSettings(
        targets_file=(directory / raw_file).absolute(),
        parallelism=_at_least_one(values, "MIGRATOR_FLEET_PARALLELISM", 4),
        canary=_count(values, "MIGRATOR_FLEET_CANARY", 0),
        max_failures=_at_least_one(values, "MIGRATOR_FLEET_MAX_FAILURES", 1),
        shards=shards,
        shard=shard,
    )


def _optional_schema(values: _Values) -> str | None:
    """MIGRATOR_SCHEMA: any name PostgreSQL takes for a schema (quoted where it is used), but
    one that would break a log line."""
    name = values.raw("MIGRATOR_SCHEMA")
    if name is None:
        return None
    if len(name.encode()) > NAME_LIMIT or not name.isprintable():
        raise UsageError(
            f"{values.label('MIGRATOR_SCHEMA')}: {name!r} is not a schema name "
            "(at most 63 bytes, no control characters)"
        )
    return name


def search_path(schema: str) -> str:
    """search_path's value for one schema: quoted, so the name is the one written (unquoted,
    `Tenant-1` would be read as `tenant-1`)."""
    return '"' + schema.replace('"', '""') + '"'


def _option_value(value: str) -> str:
    # libpq splits `options` at spaces; a backslash keeps one (and itself) in the value.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def schema_name(name: str, label: str) -> str:
    """A schema name plain enough to stand unquoted in search_path and in every log line."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise UsageError(
            f"{label}: {name!r} is not a plain schema name (a lowercase letter or _, then "
            "lowercase letters, digits or _; at most 63)"
        )
    return name


def command_from_environment(environ: Mapping[str, str]) -> list[str]:
    """The arguments a Job means when it passes none: MIGRATOR_COMMAND and MIGRATOR_TARGET."""
    values = _Values(environ, {})
    command = values.raw("MIGRATOR_COMMAND") or "upgrade"
    if command not in ENVIRONMENT_COMMANDS:
        raise UsageError(
            f"MIGRATOR_COMMAND: {command!r} is not one of {', '.join(ENVIRONMENT_COMMANDS)}"
        )
    target = values.raw("MIGRATOR_TARGET")
    if command == "downgrade" and target is None:
        raise UsageError("MIGRATOR_TARGET: required when MIGRATOR_COMMAND is downgrade")
    return [command] if target is None or command not in TARGETED_COMMANDS else [command, target]


def resolve_target(
    command: str, given: str | None, environ: Mapping[str, str], *, from_environment: bool
) -> str | None:
    """The target a command runs to, checked before anything connects: the argument, else
    MIGRATOR_TARGET, else head (for `verify`, none: all heads).

    Arguments and MIGRATOR_COMMAND/MIGRATOR_TARGET that disagree are an error, not a guess:
    in a container the image's CMD (`upgrade head`) counts as arguments, and a Job that means
    its environment to decide must not quietly run the CMD instead. A downgrade from the
    environment is deliberate: it needs MIGRATOR_ALLOW_DOWNGRADE.
    """
    values = _Values(environ, {})
    if not from_environment:
        for name, argument in (("MIGRATOR_COMMAND", command), ("MIGRATOR_TARGET", given)):
            value = values.raw(name)
            if value is not None and argument is not None and value != argument:
                raise UsageError(
                    f"{name}={value} disagrees with the arguments ({argument}); arguments are "
                    "given (in a container, the image's CMD counts), so drop one: to let the "
                    "environment decide, run `migrator` with no arguments"
                )
    if (
        command == "downgrade"
        and from_environment
        and not _flag(values, "MIGRATOR_ALLOW_DOWNGRADE")
    ):
        raise UsageError(
            "MIGRATOR_COMMAND=downgrade needs MIGRATOR_ALLOW_DOWNGRADE=true: "
            "downgrades from the environment are deliberate"
        )
    if command not in TARGETED_COMMANDS:
        return None
    target = given if given is not None else values.raw("MIGRATOR_TARGET")
    if target is None:
        return None if command == "verify" else DEFAULT_TARGET
    label = "MIGRATOR_TARGET" if from_environment or given is None else "TARGET"
    if not target or not set(target) <= _TARGET_CHARACTERS:
        raise UsageError(f"{label}: {target!r} is not a revision, 'head', 'base', '+N' or '-N'")
    return target


class _Values:
    """Raw values by environment-variable name; a command-line flag wins over the variable."""

    def __init__(self, environ: Mapping[str, str], flags: Mapping[str, str | None]) -> None:
        self.environ = environ
        self._flags = {name: value for name, value in flags.items() if value is not None}

    def raw(self, name: str) -> str | None:
        value = self.exact(name)
        return None if value is None else value.strip()

    def exact(self, name: str) -> str | None:
        """The value as given, spaces kept (a password's own), or None when empty."""
        value = self._flags.get(name, self.environ.get(name))
        if value is None or not value.strip():
            return None  # Kubernetes often passes an empty value for "not set"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a byte that is not UTF-8, kept by Python as a surrogate
            raise UsageError(f"{self.label(name)}: not UTF-8 text") from None  # never echoed
        return value

    def label(self, name: str) -> str:
        return f"{name} (command line)" if name in self._flags else name


def _seconds(values: _Values, name: str, default: float, most: float = math.inf) -> float:
    raw = values.raw(name)
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{values.label(name)}: {raw!r} is not a number of seconds (0 or more)")
    if seconds > most:
        raise UsageError(
            f"{values.label(name)}: {raw!r} is more than {most:.3f} seconds, the most "
            "PostgreSQL takes (2147483647 ms)"
        )
    return seconds


def _optional_seconds(values: _Values, name: str) -> float | None:
    """A PostgreSQL timeout in seconds, or None when unset."""
    if values.raw(name) is None:
        return None
    seconds = _seconds(values, name, 0.0, POSTGRES_TIMEOUT_LIMIT)
    if seconds == 0:
        raise UsageError(f"{values.label(name)}: must be more than 0 seconds (unset it for none)")
    return seconds


def _whole_seconds(values: _Values, name: str, default: int, most: int) -> int:
    raw = values.raw(name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise UsageError(
            f"{values.label(name)}: {raw!r} is not a whole number of seconds from 1 to {most}"
        )
    return int(raw)


def _at_least_one(values: _Values, name: str, default: int) -> int:
    count = _count(values, name, default)
    if count < 1:
        raise UsageError(f"{values.label(name)}: must be 1 or more")
    return count


def _count(values: _Values, name: str, default: int) -> int:
    raw = values.raw(name)
    if raw is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise UsageError(
            f"{values.label(name)}: {raw!r} is not a whole number (0 or more, at most 18 digits)"
        )
    return int(raw)


def truth(text: str) -> bool | None:
    """What a yes-or-no value says (TRUE_WORDS, FALSE_WORDS); None: neither."""
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _flag(values: _Values, name: str) -> bool:
    raw = values.raw(name)
    said = False if raw is None else truth(raw)
    if said is None:
        raise UsageError(f"{values.label(name)}: {raw!r} is not true or false")
    return said


def _choice(
    values: _Values, name: str, choices: tuple[str, ...], default: str, upper: bool = False
) -> str:
    raw = values.raw(name)
    if raw is None:
        return default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise UsageError(f"{values.label(name)}: {raw!r} is not one of {', '.join(choices)}")
    return value


def _optional_path(values: _Values, name: str) -> Path | None:
    raw = values.raw(name)
    return None if raw is None else Path(raw).absolute()


def _alembic_ini(values: _Values) -> Path:
    path = Path(values.raw("MIGRATOR_CONFIG") or "alembic.ini").absolute()
    if not path.is_file():
        # The image's own default is /project/alembic.ini: there, the project is missing
        # from the image; anywhere else, the command ran outside the project's directory.
        advice = (
            "build an image FROM the migrator with yours in /project, or mount one there"
            if path == IMAGE_PROJECT
            else "run it in your project's directory (beside alembic.ini), or set "
            "MIGRATOR_CONFIG (or --config) to your alembic.ini"
        )
        raise UsageError(
            f"{values.label('MIGRATOR_CONFIG')}: {path} is not a file: no Alembic project "
            f"there; {advice}"
        )
    return path


def _secret(values: _Values, name: str) -> str | None:
    """A secret from NAME, or from the file NAME_FILE names (a Kubernetes Secret volume)."""
    file_name = f"{name}_FILE"
    direct, path = values.exact(name), values.raw(file_name)
    if direct is not None and path is not None:
        raise UsageError(f"{name} and {file_name}: set one, not both")
    if path is None:
        return direct
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UsageError(f"{file_name}: cannot read {path}: {reason}") from None
    # `echo secret > file` adds a newline nobody meant; anything else is the secret's own.
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise UsageError(f"{file_name}: {path} is empty")
    return secret


def _database_url(values: _Values) -> URL | None:
    url_text = _secret(values, "DATABASE_URL")
    if url_text is not None:
        return parse_url(url_text.strip())
    if any(values.raw(name) for name in ("DB_HOST", "DB_NAME", "DB_USER", "DB_PORT")):
        return _url_from_parts(values)
    return None


def _verify_url(values: _Values) -> URL | None:
    text = values.raw("MIGRATOR_VERIFY_URL")
    return None if text is None else parse_url(text, "MIGRATOR_VERIFY_URL")


def parse_url(text: str, label: str = "DATABASE_URL") -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if len(text) > URL_LIMIT:
        raise UsageError(
            f"{label}: {len(text)} characters; no PostgreSQL connection takes a URL longer "
            f"than {URL_LIMIT}"
        )
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise UsageError(
            f"{label}: not a valid database URL "
            "(expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        ) from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise UsageError(
            f"{label}: migrator runs on PostgreSQL only, not {url.get_backend_name()!r}"
        )
    if url.host is not None and "@" in url.host:
        # user:pass@word@host: the run would wait the whole timeout for a host `word@host`.
        raise UsageError(
            f"{label}: more than one @ before the host: a password's own characters must be "
            "URL-encoded (@ as %40, : as %3A, / as %2F)"
        )
    if url.port is not None and not 1 <= url.port <= 65535:
        raise UsageError(f"{label}: port {url.port} is out of range (1-65535)")
    check_names({"host": url.host, "user": url.username, "database": url.database}, label)
    return _with_driver(url, label)


def database_url_text(environ: Mapping[str, str]) -> str | None:
    """DATABASE_URL (or the file DATABASE_URL_FILE names), as given."""
    text = _secret(_Values(environ, {}), "DATABASE_URL")
    return None if text is None else text.strip()


def database_parts(environ: Mapping[str, str]) -> dict[str, Any]:
    """DB_HOST, DB_PORT, DB_NAME, DB_USER and DB_PASSWORD (or its file), checked."""
    values = _Values(environ, {})
    missing = [name for name in ("DB_HOST", "DB_NAME", "DB_USER") if values.raw(name) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)}: required when DATABASE_URL is not set")
    raw_port = values.raw("DB_PORT") or "5432"
    if not _WHOLE_NUMBER.fullmatch(raw_port) or not 1 <= int(raw_port) <= 65535:
        raise UsageError(f"{values.label('DB_PORT')}: {raw_port!r} is not a port (1-65535)")
    for name, part in (("DB_HOST", "host"), ("DB_USER", "user"), ("DB_NAME", "database")):
        check_names({part: values.raw(name)}, name)
    return {
        "username": values.raw("DB_USER"),
        "password": _secret(values, "DB_PASSWORD"),
        "host": values.raw("DB_HOST"),
        "port": int(raw_port),
        "database": values.raw("DB_NAME"),
    }


def check_names(names: Mapping[str, str | None], label: str) -> None:
    """Refuse a host, user or database name no connection could use as given."""
    for part, name in names.items():
        if name is None:
            continue
        if part == "host" and len(name) > HOST_LIMIT:
            raise UsageError(
                f"{label}: the host name is {len(name)} characters; DNS resolves none longer "
                f"than {HOST_LIMIT}"
            )
        if part != "host" and len(name.encode("utf-8")) > NAME_LIMIT:
            raise UsageError(
                f"{label}: the {part} name is {len(name.encode('utf-8'))} bytes; PostgreSQL "
                f"names are at most {NAME_LIMIT} (it would cut it, and reach another)"
            )


def _url_from_parts(values: _Values) -> URL:
    from sqlalchemy.engine import URL

    return _with_driver(URL.create("postgresql", **database_parts(values.environ)), "DB_HOST")


def _with_driver(url: URL, label: str) -> URL:
    """The URL with its driver named, so that every line and env.py show the one in use: as
    given, or SQLAlchemy's own default (psycopg 3 since SQLAlchemy 2.1, psycopg2 before).
    `postgres://` (libpq's and Heroku's spelling) is read as `postgresql://`."""
    url = url.set(drivername=url.drivername.replace("postgres+", "postgresql+"))
    if url.drivername == "postgres":
        url = url.set(drivername="postgresql")
    driver = url.get_driver_name()
    if driver not in DRIVERS:
        raise UsageError(
            f"{label}: driver {driver!r} is not one the migrator runs on "
            f"(postgresql+psycopg:// or postgresql+psycopg2://)"
        )
    return url.set(drivername=f"postgresql+{driver}")


def milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
