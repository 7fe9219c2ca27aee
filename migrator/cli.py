"""The command line: arguments (or MIGRATOR_COMMAND) to a command, errors to exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy

import alembic
from migrator import __version__, commands, job
from migrator.config import (
    LOG_FORMATS,
    PHASES,
    Settings,
    command_from_environment,
    load_fleet_settings,
    load_settings,
    resolve_target,
)
from migrator.errors import MigratorError, UsageError
from migrator.logs import log, setup_logging
from migrator.masking import Mask


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)  # one line, exit 2, like every other bad input


@dataclass(frozen=True)
class _Subcommand:
    """A command of the command line: its function in migrator.commands (None: `fleet`, a
    group of commands), its help, and its own arguments (add_argument's, in order)."""

    name: str
    function: Callable[..., None] | None
    help: str
    arguments: tuple[_Argument, ...] = ()
    subcommands: tuple[_Subcommand, ...] = ()


# add_argument's positional and keyword arguments.
_Argument = tuple[tuple[str, ...], dict[str, Any]]


def _argument(*names: str, **options: Any) -> _Argument:
    return names, options


_JSON = _argument("--json", dest="as_json", action="store_true", help="machine-readable output")
_TARGET = _argument("target", metavar="TARGET")
_TARGET_OR_HEAD = _argument("target", nargs="?", metavar="TARGET")
_DIRECTION = _argument("direction", choices=("upgrade", "downgrade"))
_PHASE = _argument(
    "--phase",
    choices=PHASES,
    help="only the revisions of this deploy phase: pre (before the rollout) or post (after it; "
    "the branch labelled post) (MIGRATOR_PHASE)",
)

# Every option a command takes before or after its name. SUPPRESS: an option given before
# the command is not reset by the command's parser.
_COMMON = (
    _argument("--config", metavar="PATH", help="alembic.ini to use (MIGRATOR_CONFIG)"),
    _argument(
        "--wait-timeout",
        metavar="SECONDS",
        help="seconds to wait for the database (MIGRATOR_WAIT_TIMEOUT)",
    ),
    _argument(
        "--lock-timeout",
        metavar="SECONDS",
        help="seconds to wait for the migration lock (MIGRATOR_LOCK_TIMEOUT)",
    ),
    _argument("--log-format", choices=LOG_FORMATS, help="text or json (MIGRATOR_LOG_FORMAT)"),
    _argument(
        "--debug",
        action="store_true",
        help="log at DEBUG, with tracebacks (MIGRATOR_LOG_LEVEL=DEBUG)",
    ),
)

_FLEET_COMMANDS = (
    _Subcommand(
        "upgrade",
        commands.fleet_upgrade,
        "upgrade each target to TARGET",
        (
            _JSON,
            _TARGET_OR_HEAD,
            _PHASE,
            _argument(
                "--canary-only",
                action="store_true",
                help="only the first MIGRATOR_FLEET_CANARY targets (a canary Job before the fleet)",
            ),
        ),
    ),
    _Subcommand(
        "downgrade", commands.fleet_downgrade, "downgrade each target to TARGET", (_JSON, _TARGET)
    ),
    _Subcommand("current", commands.fleet_current, "each target's revision", (_JSON,)),
    _Subcommand(
        "plan",
        commands.fleet_plan,
        "the revisions each target would run",
        (_JSON, _DIRECTION, _TARGET, _PHASE),
    ),
)

_COMMANDS = (
    _Subcommand(
        "upgrade",
        commands.upgrade,
        "upgrade to TARGET (default head)",
        (
            _TARGET_OR_HEAD,
            _PHASE,
            _argument("--sql", action="store_true", help="print the SQL; no database needed"),
        ),
    ),
    _Subcommand(
        "downgrade",
        commands.downgrade,
        "downgrade to TARGET",
        (
            _TARGET,
            _argument(
                "--sql", action="store_true", help="print the SQL for FROM:TO; no database needed"
            ),
        ),
    ),
    _Subcommand(
        "plan",
        commands.plan,
        "the revisions an upgrade or downgrade would run",
        (
            _DIRECTION,
            _TARGET,
            _JSON,
            _PHASE,
            _argument(
                "--safety",
                action="store_true",
                help="weigh what each revision locks, rewrites and scans (as measured where the "
                "project was built: verify) with this database's table sizes",
            ),
            _argument(
                "--markdown", dest="as_markdown", action="store_true", help="Markdown output"
            ),
        ),
    ),
    _Subcommand(
        "verify",
        commands.verify,
        "on a scratch database: one head, every downgrade undoes its upgrade, models match",
        (
            _argument(
                "target",
                nargs="?",
                metavar="TARGET",
                help="the heads to verify, when there are several",
            ),
            _JSON,
        ),
    ),
    _Subcommand(
        "current",
        commands.current,
        "the database's revision, and whether it is head",
        (_JSON,),
    ),
    _Subcommand(
        "history",
        commands.history,
        "every revision, applied ones marked with their deploy ledger row",
        (
            _JSON,
            _argument(
                "--ledger", action="store_true", help="every row of the deploy ledger, oldest first"
            ),
        ),
    ),
    _Subcommand(
        "check",
        commands.check,
        "exit 5 unless the database is at head and the models match",
        (_JSON,),
    ),
    _Subcommand(
        "stamp",
        commands.stamp,
        "mark the database as at TARGET; no revision runs",
        (
            _TARGET,
            _argument(
                "--if-matches",
                dest="if_matches",
                action="store_true",
                help="only when the database's schema matches the models (exit 5 otherwise)",
            ),
        ),
    ),
    _Subcommand(
        "accept",
        commands.accept,
        "record an applied revision's edited file as reviewed",
        (_argument("revision", metavar="REVISION"),),
    ),
    _Subcommand(
        "fleet",
        None,
        "run a command on every target of MIGRATOR_FLEET_FILE (tenant databases or schemas), "
        "a few at a time",
        subcommands=_FLEET_COMMANDS,
    ),
    _Subcommand("wait", commands.wait, "only wait until the database accepts connections"),
    _Subcommand(
        "manifest",
        commands.manifest,
        "write the project's manifest (at image build time: fast no-op deploys)",
        (
            _argument(
                "--measure",
                action="store_true",
                help="also measure each revision's effects on a scratch database on the "
                "configured server and record them, for the deploys' safety report (as "
                "verify does)",
            ),
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The command line, from the tables above."""
    common = _Parser(add_help=False)
    for names, options in _COMMON:
        common.add_argument(*names, default=argparse.SUPPRESS, **options)
    parser = _Parser(
        prog="migrator",
        parents=[common],
        description="Wait for PostgreSQL, take the migration lock, run Alembic to a target. "
        "With no arguments, MIGRATOR_COMMAND and MIGRATOR_TARGET say what to do.",
    )
    parser.add_argument("--version", action="version", version=_version())
    _add_subcommands(parser, "command", _COMMANDS, common)
    return parser


def _add_subcommands(
    parser: argparse.ArgumentParser,
    dest: str,
    table: tuple[_Subcommand, ...],
    common: _Parser,
) -> None:
    subparsers = parser.add_subparsers(
        dest=dest, required=True, metavar="COMMAND", parser_class=_Parser
    )
    for command in table:
        if command.function is None:  # a group: `fleet COMMAND`
            group = subparsers.add_parser(command.name, help=command.help)
            _add_subcommands(group, f"{command.name}_command", command.subcommands, common)
            continue
        subparser = subparsers.add_parser(
            command.name, parents=[common], help=command.help, description=command.help
        )
        subparser.set_defaults(func=command.function)
        for names, options in command.arguments:
            subparser.add_argument(*names, **options)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The `migrator` command: `argv` (else sys.argv's) and `environ` (else os.environ's) to
    one run; its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    early_format = environ.get("MIGRATOR_LOG_FORMAT", "").strip().lower()
    setup_logging("json" if early_format == "json" else "text", "INFO")
    try:
        settings, command = _read(arguments, environ)
    except MigratorError as error:  # bad input: one line, nothing done
        log.error("%s", error)
        return error.exit_status
    return job.run_one(settings, command).exit_status


def _read(arguments: list[str], environ: Mapping[str, str]) -> tuple[Settings, job.Command]:
    """The settings and the command that the arguments (none: MIGRATOR_COMMAND) and the
    environment ask for, every value checked."""
    from_environment = not arguments
    args = build_parser().parse_args(arguments or command_from_environment(environ))
    settings = load_settings(environ, _flags(args))
    # From here on, a bad value is said in the log format asked for, its secrets masked.
    mask = Mask(settings.passwords)
    setup_logging(settings.log_format, settings.log_level, mask, settings.tenant)
    options = _options(args)
    command = args.fleet_command if args.command == "fleet" else args.command
    target = resolve_target(
        command, options.get("target"), environ, from_environment=from_environment
    )
    if "target" in options:
        options["target"] = target
    if args.command == "fleet":
        # A relative MIGRATOR_FLEET_FILE is beside alembic.ini, where the run works.
        options["fleet_settings"] = load_fleet_settings(environ, settings.alembic_ini.parent)
    return settings, job.Command(args.command, args.func, options)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The command's own arguments, by the name its function takes them."""
    general = {
        "command",
        "fleet_command",
        "func",
        "config",
        "wait_timeout",
        "lock_timeout",
        "log_format",
        "debug",
        "phase",
    }
    return {name: value for name, value in vars(args).items() if name not in general}


def _flags(args: argparse.Namespace) -> dict[str, str | None]:
    """Command-line flags by the environment variable they override."""
    return {
        "MIGRATOR_CONFIG": getattr(args, "config", None),
        "MIGRATOR_WAIT_TIMEOUT": getattr(args, "wait_timeout", None),
        "MIGRATOR_LOCK_TIMEOUT": getattr(args, "lock_timeout", None),
        "MIGRATOR_LOG_FORMAT": getattr(args, "log_format", None),
        "MIGRATOR_LOG_LEVEL": "DEBUG" if getattr(args, "debug", False) else None,
        "MIGRATOR_PHASE": getattr(args, "phase", None),
    }


def _version() -> str:
    return (
        f"migrator {__version__} (alembic {alembic.__version__}, "
        f"sqlalchemy {sqlalchemy.__version__}, python {sys.version.split()[0]})"
    )
