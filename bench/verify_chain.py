"""How long `migrator verify` takes: the example tree and a generated 200-revision chain,
beside the plain sum of that chain's steps (`alembic upgrade head` + `alembic downgrade base`).

Usage, from the repository root, with DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD naming
a server where the user may create databases:

    .venv/bin/python bench/verify_chain.py [REVISIONS]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REVISION = '''"""step {n}"""
from alembic import op
import sqlalchemy as sa

revision = "r{n:04d}"
down_revision = {down!r}


def upgrade():
    op.create_table("t{n:04d}", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.String(50), nullable=False, server_default="x"))
    op.create_index("ix_t{n:04d}_name", "t{n:04d}", ["name"])


def downgrade():
    op.drop_index("ix_t{n:04d}_name", table_name="t{n:04d}")
    op.drop_table("t{n:04d}")
'''


def chain(directory: Path, revisions: int) -> Path:
    versions = directory / "alembic" / "versions"
    versions.mkdir(parents=True)
    (directory / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/alembic\npath_separator = os\nsqlalchemy.url =\n"
    )
    (directory / "alembic" / "env.py").write_text(
        "from migrator.alembic_env import run_migrations\n\nrun_migrations(None)\n"
    )
    for n in range(1, revisions + 1):
        down = f"r{n - 1:04d}" if n > 1 else None
        (versions / f"r{n:04d}.py").write_text(REVISION.format(n=n, down=down))
    return directory / "alembic.ini"


def seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    revisions = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    env = dict(os.environ)
    verify = [str(BIN / "migrator"), "verify"]
    example = seconds(verify, {**env, "MIGRATOR_CONFIG": str(ROOT / "alembic.ini")})
    print(f"verify, example tree (4 revisions): {example:.2f} s")

    url = URL.create(
        "postgresql+psycopg2",
        username=env["DB_USER"],
        password=env.get("DB_PASSWORD"),
        host=env["DB_HOST"],
        port=int(env.get("DB_PORT", "5432")),
        database=env["DB_NAME"],
    )
    admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with tempfile.TemporaryDirectory() as directory, admin.connect() as connection:
        ini = chain(Path(directory), revisions)
        chain_env = {**env, "MIGRATOR_CONFIG": str(ini)}
        verified = seconds(verify, chain_env)
        connection.execute(text("CREATE DATABASE bench_chain"))
        try:
            # Plain alembic reads its URL from the ini: a copy that names the bench database
            # (a temporary file, removed with its directory).
            plain = Path(directory) / "plain.ini"
            bench_url = url.set(database="bench_chain").render_as_string(hide_password=False)
            plain.write_text(
                ini.read_text().replace(
                    "sqlalchemy.url =", f"sqlalchemy.url = {bench_url.replace('%', '%%')}"
                )
            )
            alembic = [str(BIN / "alembic"), "-c", str(plain)]
            up = seconds([*alembic, "upgrade", "head"], env)
            down = seconds([*alembic, "downgrade", "base"], env)
        finally:
            connection.execute(text("DROP DATABASE bench_chain WITH (FORCE)"))
    print(f"verify, {revisions}-revision chain: {verified:.2f} s")
    print(
        f"  plain sum of its steps: upgrade head {up:.2f} s + downgrade base {down:.2f} s"
        f" = {up + down:.2f} s (verify runs each step twice up, once down, and snapshots)"
    )


if __name__ == "__main__":
    main()
