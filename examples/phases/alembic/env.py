"""Alembic's environment for the expand/contract example: the example application after the
rename (this directory's models.py), with the application's own revisions and this
example's two (alembic.ini's version_locations)."""

from logging.config import fileConfig

from models import Base

from alembic import context
from migrator.alembic_env import run_migrations
from persistence.db import SQLALCHEMY_DATABASE_URL

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)

run_migrations(Base.metadata, default_url=SQLALCHEMY_DATABASE_URL)
