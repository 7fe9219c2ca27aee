"""The `migrator` command and `python -m migrator`.

Its first line makes SIGTERM and SIGINT recorded rather than fatal, before anything heavy is
imported (SQLAlchemy and Alembic take most of a second on a busy node): a signal at any
moment after it ends the run with its summary and 143 or 130. Only the interpreter's own
start, before this module runs, is left to the signal's default.
"""

from migrator import signals


def main() -> int:
    signals.catch()
    from migrator.fast import main as run  # the no-op fast path, else the full CLI

    status = run()
    # The run is over and reported: a signal from now on changes nothing (the interpreter's
    # shutdown would otherwise put the default, dying, handlers back).
    signals.ignore()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
