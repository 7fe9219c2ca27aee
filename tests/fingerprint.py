"""A database's fingerprint: its catalog and its rows, to prove that a run left it alone."""

from __future__ import annotations

import sqlalchemy as sa

_CATALOG = sa.text(
    r"""
    SELECT format('relation %s.%s kind %s file %s', n.nspname, c.relname, c.relkind,
                  c.relfilenode)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
    UNION ALL
    SELECT format('column %s.%s %s not null %s%s%s', a.attrelid::regclass, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  ' default ' || pg_get_expr(d.adbin, d.adrelid),
                  CASE WHEN a.attisdropped THEN ' dropped' END)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
    UNION ALL
    SELECT format('constraint %s.%s %s', o.conrelid::regclass, o.conname,
                  pg_get_constraintdef(o.oid))
    FROM pg_constraint o JOIN pg_namespace n ON n.oid = o.connamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
    UNION ALL
    SELECT 'index ' || indexdef FROM pg_indexes
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
    """
)
_TABLES = sa.text(
    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
)


def fingerprint(engine: sa.Engine) -> dict[str, object]:
    """Every relation (with its file: a rewrite gives it a new one), column (type,
    nullability, default), constraint and index, and each table's row count and an md5 of
    its rows: equal fingerprints mean nothing changed."""
    with engine.connect() as connection:
        catalog = sorted(row[0] for row in connection.execute(_CATALOG))
        rows = {}
        for (table,) in connection.execute(_TABLES).all():
            rows[table] = tuple(
                connection.execute(
                    sa.text(
                        "SELECT count(*), "
                        "md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                        f"FROM {table} t"
                    )
                ).one()
            )
    return {"catalog": catalog, "rows": rows}
