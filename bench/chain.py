"""Generated migration chains: one Alembic project and the same SQL as dbmate files.

The Alembic project is what `alembic init` makes, unchanged but for its revisions. Each
revision runs its SQL through `op.execute`, so Alembic, the migrator and dbmate run the
very same statements. The steps cycle through what real chains do to a table: create it
(with rows), add a column, index it, add a check constraint, update data, rename a column.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

from alembic.config import Config

from alembic import command


def steps(table: str) -> list[tuple[str, str, str]]:
    """(name, upgrade SQL, downgrade SQL) for the six kinds of step on one table."""
    return [
        (
            f"create {table}",
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, name text NOT NULL, "
            f"qty integer NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now()); "
            f"INSERT INTO {table} (name, qty) "
            f"SELECT 'item ' || g, g FROM generate_series(1, 100) g",
            f"DROP TABLE {table}",
        ),
        (
            f"add {table}.note",
            f"ALTER TABLE {table} ADD COLUMN note text",
            f"ALTER TABLE {table} DROP COLUMN note",
        ),
        (
            f"index {table}.name",
            f"CREATE INDEX ix_{table}_name ON {table} (name)",
            f"DROP INDEX ix_{table}_name",
        ),
        (
            f"check {table}.qty",
            f"ALTER TABLE {table} ADD CONSTRAINT ck_{table}_qty CHECK (qty >= 0)",
            f"ALTER TABLE {table} DROP CONSTRAINT ck_{table}_qty",
        ),
        (
            f"fill {table}.note",
            f"UPDATE {table} SET note = 'note ' || id",
            f"UPDATE {table} SET note = NULL",
        ),
        (
            f"rename {table}.note",
            f"ALTER TABLE {table} RENAME COLUMN note TO remark",
            f"ALTER TABLE {table} RENAME COLUMN remark TO note",
        ),
    ]


def chain(revisions: int) -> list[tuple[str, str, str]]:
    """The first `revisions` steps, over as many tables as they need."""
    all_steps: list[tuple[str, str, str]] = []
    table = 0
    while len(all_steps) < revisions:
        all_steps += steps(f"t{table:04d}")
        table += 1
    return all_steps[:revisions]


def revision_id(number: int) -> str:
    return hashlib.sha1(f"bench-{number}".encode()).hexdigest()[:12]


REVISION = '''"""{name}

Revision ID: {revision}
Revises: {down_revision}
"""

from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute({upgrade!r})


def downgrade() -> None:
    op.execute({downgrade!r})
'''


TRAFFIC = [
    (
        "create traffic",
        "CREATE TABLE traffic (id integer PRIMARY KEY, qty integer NOT NULL); "
        "INSERT INTO traffic SELECT g, 0 FROM generate_series(1, 1000) g",
        "DROP TABLE traffic",
    ),
    (
        "add traffic.note",
        "ALTER TABLE traffic ADD COLUMN note text",
        "ALTER TABLE traffic DROP COLUMN note",
    ),
]


def write_projects(directory: Path, chain_steps: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    """An Alembic project and a dbmate migrations folder in `directory`, one revision per
    step; returns (alembic.ini, dbmate migrations folder).

    Beside alembic.ini, alembic-per-revision.ini runs the same revisions through an env.py
    whose one change is `transaction_per_migration=True`: plain Alembic doing what the
    migrator does, a commit per revision."""
    ini = directory / "alembic.ini"
    dbmate = directory / "dbmate"
    directory.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()):  # init's chatter
        command.init(Config(str(ini)), str(directory / "migrations"))
    versions = directory / "migrations" / "versions"
    dbmate.mkdir()
    previous = None
    for number, (name, upgrade, downgrade) in enumerate(chain_steps, start=1):
        revision = revision_id(number)
        (versions / f"{revision}_{number:04d}.py").write_text(
            REVISION.format(
                name=name,
                revision=revision,
                down_revision=previous,
                upgrade=upgrade,
                downgrade=downgrade,
            )
        )
        (dbmate / f"{number:05d}_step.sql").write_text(
            f"-- migrate:up\n{upgrade};\n\n-- migrate:down\n{downgrade};\n"
        )
        previous = revision
    per_revision_env = directory / "migrations-per-revision"
    per_revision_env.mkdir()
    env = (directory / "migrations" / "env.py").read_text()
    configured = "connection=connection, target_metadata=target_metadata"
    assert configured in env, "alembic init's env.py changed"
    (per_revision_env / "env.py").write_text(
        env.replace(configured, f"{configured}, transaction_per_migration=True")
    )
    per_revision(ini).write_text(
        ini.read_text().replace(
            f"script_location = {directory / 'migrations'}",
            f"script_location = {per_revision_env}\nversion_locations = {versions}",
        )
    )
    return ini, dbmate


def write_url(ini: Path, copy: Path, url: str) -> None:
    """A copy of alembic.ini with `url` as sqlalchemy.url, as a plain Alembic user sets it."""
    lines = ini.read_text().splitlines()
    copy.write_text(
        "\n".join(f"sqlalchemy.url = {url}" if line.startswith("sqlalchemy.url") else line
                  for line in lines) + "\n"
    )  # fmt: skip


def per_revision(ini: Path) -> Path:
    return ini.with_name("alembic-per-revision.ini")


def tables(revisions: int) -> int:
    return -(-revisions // len(steps("t")))
