"""One exception type per exit status; the CLI maps them to exit codes in one place."""


class MigratorError(Exception):
    """An expected failure: printed as one line, never with a traceback."""

    exit_status = 1
    status = "failed"


class MigrationFailed(MigratorError):
    """A revision failed; its transaction was rolled back."""

    exit_status = 1


class UsageError(MigratorError):
    """Bad arguments or configuration, or an unknown or ambiguous revision. Nothing was changed."""

    exit_status = 2
    status = "usage error"


class DatabaseUnreachable(MigratorError):
    exit_status = 3
    status = "unreachable"


class LockTimeout(MigratorError):
    exit_status = 4
    status = "lock timeout"


class DifferenceFound(MigratorError):
    """`check` or `verify` found the database or the migrations not as they should be."""

    exit_status = 5
    status = "difference"


class AccessDenied(MigratorError):
    """The database refused the credentials or a permission."""

    exit_status = 6
    status = "access denied"


class Interrupted(MigratorError):
    """SIGTERM or SIGINT stopped the run; the revision in flight was rolled back."""

    status = "interrupted"

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signal_number
