"""Alembic's environment for the example application: hands its models to the migrator's helper.

Plain `alembic upgrade head` works here too, with the URL from DB_* (persistence.db).
"""

from logging.config import fileConfig

from alembic import context
from migrator.alembic_env import run_migrations
from persistence import models  # noqa: F401  (registers the models on Base.metadata)
from persistence.db import SQLALCHEMY_DATABASE_URL, Base

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)

run_migrations(Base.metadata, default_url=SQLALCHEMY_DATABASE_URL)
