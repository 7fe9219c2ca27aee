"""the tables the later revisions change (the test fills them)"""

from alembic import op

revision = "r00"
down_revision = None

STATEMENTS = (
    "CREATE TYPE mood AS ENUM ('happy', 'sad')",
    "CREATE DOMAIN email_address AS text",
    "CREATE TABLE owners (id bigint PRIMARY KEY, name text)",
    """
    CREATE TABLE accounts (
        id int PRIMARY KEY,
        owner_id bigint NOT NULL,
        email text,
        contact email_address,
        note text,
        nickname text,
        legacy_code text,
        score int CONSTRAINT accounts_score_positive CHECK (score >= 0),
        created_at timestamptz,
        mood mood
    )
    """,
    "CREATE INDEX accounts_owner_id ON accounts (owner_id)",
    "CREATE TABLE events (id bigint NOT NULL, account_id int, kind text)",
    "CREATE TABLE archive (id bigint, body text)",
    "CREATE TABLE tags (id int, label text)",
    "CREATE TABLE measurements (id bigint, taken date) PARTITION BY RANGE (taken)",
    "CREATE TABLE measurements_2024 PARTITION OF measurements "
    "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("measurements", "tags", "archive", "events", "accounts", "owners"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP DOMAIN email_address")
    op.execute("DROP TYPE mood")
