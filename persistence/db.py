"""Database settings of the example application, from the environment, as in the tutorial."""

import importlib.util
import os

from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, sessionmaker

# URL.create quotes what needs quoting in the password. The driver is the one installed:
# psycopg 3 (SQLAlchemy 2.1's default), else psycopg2 (an application that has only that).
DRIVER = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
SQLALCHEMY_DATABASE_URL = URL.create(
    f"postgresql+{DRIVER}",
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
