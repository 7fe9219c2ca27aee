"""migrator: wait for PostgreSQL, take a migration lock, run Alembic to a target revision."""

# The one place the version is written; pyproject.toml reads it from here. (Asking
# importlib.metadata instead costs every run a few milliseconds of METADATA parsing.)
__version__ = "0.1.0"
