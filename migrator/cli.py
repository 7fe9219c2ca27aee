"""The command line: arguments (or MIGRATOR_COMMAND) to a command, errors to exit statuses."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import sqlalchemy

import alembic
from migrator import __version__, commands, signals
from migrator.config import (
    LOG_FORMATS,
    command_from_environment,
    load_settings,
    resolve_target,
)
from migrator.errors import MigratorError, UsageError, reason
from migrator.logs import MaskedStream, Summary, log, report_summary, setup_logging
from migrator.masking import Mask


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)  # one line, exit 2, like every other bad input


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: an option given before the command is not reset by the command's parser.
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="alembic.ini to use (MIGRATOR_CONFIG)",
    )
    common.add_argument(
        "--wait-timeout",
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="seconds to wait for the database (MIGRATOR_WAIT_TIMEOUT)",
    )
    common.add_argument(
        "--lock-timeout",
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="seconds to wait for the migration lock (MIGRATOR_LOCK_TIMEOUT)",
    )
    common.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=LOG_FORMATS,
        help="text or json (MIGRATOR_LOG_FORMAT)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log at DEBUG, with tracebacks (MIGRATOR_LOG_LEVEL=DEBUG)",
    )

    parser = _Parser(
        prog="migrator",
        parents=[common],
        description="Wait for PostgreSQL, take the migration lock, run Alembic to a target. "
        "With no arguments, MIGRATOR_COMMAND and MIGRATOR_TARGET say what to do.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subcommands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add(command: Callable[..., None], name: str, help_text: str) -> argparse.ArgumentParser:
        subparser = subcommands.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        subparser.set_defaults(func=command)
        return subparser

    def add_json(subparser: argparse.ArgumentParser) -> None:
        subparser.add_argument(
            "--json", dest="as_json", action="store_true", help="machine-readable output"
        )

    upgrade = add(commands.upgrade, "upgrade", "upgrade to TARGET (default head)")
    upgrade.add_argument("target", nargs="?", metavar="TARGET")
    upgrade.add_argument("--sql", action="store_true", help="print the SQL; no database needed")
    downgrade = add(commands.downgrade, "downgrade", "downgrade to TARGET")
    downgrade.add_argument("target", metavar="TARGET")
    downgrade.add_argument(
        "--sql", action="store_true", help="print the SQL for FROM:TO; no database needed"
    )
    plan = add(commands.plan, "plan", "the revisions an upgrade or downgrade would run")
    plan.add_argument("direction", choices=("upgrade", "downgrade"))
    plan.add_argument("target", metavar="TARGET")
    add_json(plan)
    plan.add_argument(
        "--safety",
        action="store_true",
        help="weigh what each revision locks, rewrites and scans (as measured where the "
        "project was built: verify) with this database's table sizes",
    )
    plan.add_argument("--markdown", dest="as_markdown", action="store_true", help="Markdown output")
    verify = add(
        commands.verify,
        "verify",
        "on a scratch database: one head, every downgrade undoes its upgrade, models match",
    )
    verify.add_argument(
        "target", nargs="?", metavar="TARGET", help="the heads to verify, when there are several"
    )
    add_json(verify)
    add_json(add(commands.current, "current", "the database's revision, and whether it is head"))
    history = add(commands.history, "history", "every revision, applied ones marked")
    add_json(history)
    history.add_argument(
        "--ledger", action="store_true", help="every row of the deploy ledger, oldest first"
    )
    add_json(
        add(commands.check, "check", "exit 5 unless the database is at head and the models match")
    )
    stamp = add(commands.stamp, "stamp", "mark the database as at TARGET; no revision runs")
    stamp.add_argument("target", metavar="TARGET")
    stamp.add_argument(
        "--if-matches",
        dest="if_matches",
        action="store_true",
        help="only when the database's schema matches the models (exit 5 otherwise)",
    )
    accept = add(commands.accept, "accept", "record an applied revision's edited file as reviewed")
    accept.add_argument("revision", metavar="REVISION")
    fleet = subcommands.add_parser(
        "fleet",
        help="run a command on every target of MIGRATOR_FLEET_FILE (tenant databases or "
        "schemas), a few at a time",
    )
    fleet_commands = fleet.add_subparsers(
        dest="fleet_command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add_fleet(
        command: Callable[..., None], name: str, help_text: str
    ) -> argparse.ArgumentParser:
        subparser = fleet_commands.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        subparser.set_defaults(func=command)
        add_json(subparser)
        return subparser

    fleet_upgrade = add_fleet(commands.fleet_upgrade, "upgrade", "upgrade each target to TARGET")
    fleet_upgrade.add_argument("target", nargs="?", metavar="TARGET")
    fleet_upgrade.add_argument(
        "--canary-only",
        action="store_true",
        help="only the first MIGRATOR_FLEET_CANARY targets (a canary Job before the fleet)",
    )
    add_fleet(
        commands.fleet_downgrade, "downgrade", "downgrade each target to TARGET"
    ).add_argument("target", metavar="TARGET")
    add_fleet(commands.fleet_current, "current", "each target's revision")
    fleet_plan = add_fleet(commands.fleet_plan, "plan", "the revisions each target would run")
    fleet_plan.add_argument("direction", choices=("upgrade", "downgrade"))
    fleet_plan.add_argument("target", metavar="TARGET")
    add(commands.wait, "wait", "only wait until the database accepts connections")
    add(
        commands.manifest,
        "manifest",
        "write the project's manifest (at image build time: fast no-op deploys)",
    ).add_argument(
        "--measure",
        action="store_true",
        help="also measure each revision's effects on a scratch database on the configured "
        "server and record them, for the deploys' safety report (as verify does)",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    early_format = environ.get("MIGRATOR_LOG_FORMAT", "").strip().lower()
    setup_logging("json" if early_format == "json" else "text", "INFO")
    logging.captureWarnings(True)  # a library's warning is a log line too, in the log's format
    try:
        from_environment = not arguments
        args = build_parser().parse_args(arguments or command_from_environment(environ))
        settings = load_settings(environ, _flags(args))
        mask = Mask(settings.passwords)
        setup_logging(settings.log_format, settings.log_level, mask, settings.tenant)
        sys.stdout = MaskedStream(sys.stdout, mask)
        options = _options(args)
        command = args.fleet_command if args.command == "fleet" else args.command
        target = resolve_target(
            command, options.get("target"), environ, from_environment=from_environment
        )
        if "target" in options:
            options["target"] = target
    except MigratorError as error:  # bad input: one line, nothing done
        log.error("%s", error)
        return error.exit_status

    summary = Summary(command=args.command)
    debug = settings.log_level == "DEBUG"
    try:
        # Relative paths in alembic.ini (prepend_sys_path, script_location) mean what they
        # mean to `alembic` run beside the file.
        os.chdir(settings.alembic_ini.parent)
        signals.run_interruptibly(lambda: args.func(settings, summary, **options))
        exit_status = 0
    except MigratorError as error:
        log.error("%s", error, exc_info=debug)
        if isinstance(error, UsageError):
            return error.exit_status  # nothing was done: the one line says it all
        summary.status, exit_status = error.status, error.exit_status
    except Exception as error:  # a bug or something unforeseen: still one line, still masked
        log.error("unexpected %s: %s", type(error).__name__, reason(error), exc_info=debug)
        summary.status, exit_status = "failed", 1
    report_summary(summary, mask, settings.termination_log, settings.summary_file)
    if signals.abandoned.is_set():
        # The worker holds a driver lock inside a stalled socket: a normal interpreter exit
        # would wait on it when closing connections. Leave now; the server cleans up.
        logging.shutdown()
        os._exit(exit_status)
    return exit_status


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
    }


def _version() -> str:
    return (
        f"migrator {__version__} (alembic {alembic.__version__}, "
        f"sqlalchemy {sqlalchemy.__version__}, python {sys.version.split()[0]})"
    )
