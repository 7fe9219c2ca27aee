"""Database settings of the example application, from the environment, as in the tutorial."""

import os

from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, sessionmaker

# URL.create quotes what needs quoting in the password; no driver named: SQLAlchemy's
# default (psycopg 3 on SQLAlchemy 2.1), as the migrator's own DB_* use.
SQLALCHEMY_DATABASE_URL = URL.create(
    "postgresql",
    username=os.environ.get("DB_USER"),
    password=os.environ.get("DB_PASSWORD"),
    host=os.environ.get("DB_HOST"),
    port=int(os.environ.get("DB_PORT") or 5432),
    database=os.environ.get("DB_NAME"),
)

engine = create_engine(SQLALCHEMY_DATABASE_URL)
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)


class Base(DeclarativeBase):
    """The base class of every model."""


def get_db():  # type: ignore[no-untyped-def]
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()
