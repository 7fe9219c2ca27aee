"""migrator: wait for PostgreSQL, take a migration lock, run Alembic to a target revision."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("migrator")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
