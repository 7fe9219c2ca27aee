"""The project's manifest: what a no-op deploy needs to know of the project (its head, the
version table env.py names), written once at image build time (`migrator manifest`) and
keyed by a hash of the project's files, so that a run can trust it by hashing the files,
without importing them.

Beside it, under "effects", what each revision measurably does (migrator.safety), recorded
by `verify` where the project is built, each keyed by its own file's hash: a deploy weighs
the effects of the revisions whose files are unchanged, without a scratch database.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from migrator import __version__, project_files
from migrator.errors import AccessDenied, UsageError

NAME = "migrator-manifest.json"
# The shape of a recorded effect (safety.Effects as a dict): a manifest with another is not
# read, so a newer migrator never misreads an older one's effects.
EFFECTS_FORMAT = 1


def path_for(alembic_ini: Path) -> Path:
    return alembic_ini.parent / NAME


def fingerprint(alembic_ini: Path, directories: list[str], files: list[str]) -> str:
    """A hash of alembic.ini, of every file under the project's script and version
    directories that Alembic could load (names and contents; symlinks followed, bytecode
    included: project_files.files_under), and of the project's own modules env.py imported
    (`files`: where its version table may be decided), so that any edit, addition or
    removal changes it. Raises PermissionError for a file or directory the migrator's user
    cannot read, FileNotFoundError for a module gone."""
    digest = hashlib.sha256(alembic_ini.read_bytes())
    base = alembic_ini.parent
    for directory in sorted(directories):
        root = base / directory
        for path in project_files.files_under(root):
            digest.update(str(Path(directory) / path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (base / name).read_bytes() + b"\0")
    return digest.hexdigest()


def write(
    alembic_ini: Path,
    directories: list[str],
    files: list[str],
    heads: list[str],
    version_table: str,
    version_table_schema: str | None,
    checksums: dict[str, str],
) -> Path:
    document = {
        **_kept_effects(_existing(alembic_ini)),
        "migrator": __version__,
        "hash": fingerprint(alembic_ini, directories, files),
        "directories": sorted(directories),
        "files": sorted(files),
        "heads": sorted(heads),
        "version_table": version_table,
        "version_table_schema": version_table_schema,
        # Each revision's code checksum: the fast path checks the deploy ledger with them.
        "checksums": checksums,
    }
    return _save(alembic_ini, document)


def _save(alembic_ini: Path, document: dict[str, Any]) -> Path:
    target = path_for(alembic_ini)
    try:
        target.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as error:  # a read-only root, a mounted project: the build is the place
        problem = f"{target}: cannot write the manifest ({error.strerror})"
        advice = "run `migrator manifest` where the project is built, as the image build does"
        if isinstance(error, PermissionError):
            raise AccessDenied(f"{problem}: {advice}") from None
        raise UsageError(f"{problem}: {advice}") from None
    return target


def read(alembic_ini: Path) -> dict[str, Any]:
    """The manifest, if it still describes this project exactly; raises ValueError (or an
    OSError) saying why not."""
    document: dict[str, Any] = json.loads(path_for(alembic_ini).read_text(encoding="utf-8"))
    if "hash" not in document:
        raise ValueError("it holds only measured effects: `migrator manifest` was not run")
    if document.get("migrator") != __version__:
        raise ValueError(f"it was written by migrator {document.get('migrator')}")
    if fingerprint(alembic_ini, document["directories"], document["files"]) != document["hash"]:
        raise ValueError("the project's files changed since it was written")
    return document


def revision_hash(path: str | Path) -> str:
    """What a recorded effect is keyed by: the revision file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_effects(alembic_ini: Path, schema: str, measured: dict[str, dict[str, Any]]) -> Path:
    """Add `measured` (revision: {"file": its hash, "effects": ...}) to the manifest, keeping
    the rest of it and what other revisions recorded. `schema` is the one the revisions were
    measured in: a deploy into another (MIGRATOR_SCHEMA, a fleet's schema target) reads the
    names of its tables as its own."""
    document = _existing(alembic_ini)
    kept = _kept_effects(document).get("effects", {}).get("revisions", {})
    measured = {revision: {**record, "schema": schema} for revision, record in measured.items()}
    document["effects"] = {"format": EFFECTS_FORMAT, "revisions": {**kept, **measured}}
    return _save(alembic_ini, document)


def recorded_effects(alembic_ini: Path, schema: str) -> dict[str, dict[str, Any]]:
    """The recorded effects (revision: {"file": hash, "effects": ...}), with the tables of the
    schema they were measured in named as in `schema`; none when there is no manifest, or
    one of another format."""
    revisions = _kept_effects(_existing(alembic_ini)).get("effects", {}).get("revisions", {})
    return {
        revision: {
            **record,
            "effects": _renamed(
                record["effects"], _qualified(record["schema"]), _qualified(schema)
            ),
        }
        for revision, record in revisions.items()
    }


def _existing(alembic_ini: Path) -> dict[str, Any]:
    try:
        document = json.loads(path_for(alembic_ini).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _kept_effects(document: dict[str, Any]) -> dict[str, Any]:
    """{"effects": ...} as recorded, if it is of this format; else {}."""
    effects = document.get("effects")
    if not isinstance(effects, dict) or effects.get("format") != EFFECTS_FORMAT:
        return {}
    return {"effects": effects}


def _qualified(schema: str) -> str:
    """A schema's prefix as PostgreSQL's format('%I.%I') spells it: the names measured are."""
    plain = schema == schema.lower() and schema.isidentifier() and schema.isascii()
    return f"{schema}." if plain else '"' + schema.replace('"', '""') + '".'


def _renamed(effects: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`effects` with every table, index and constraint named with prefix `old` named with
    `new` instead (what the revision is and says is left as it is)."""
    if old == new:
        return effects

    def renamed(value: Any) -> Any:
        if isinstance(value, str):
            return new + value.removeprefix(old) if value.startswith(old) else value
        if isinstance(value, dict):
            return {renamed(key): renamed(item) for key, item in value.items()}
        if isinstance(value, list):
            return [renamed(item) for item in value]
        return value

    own = ("revision", "message", "direction")
    return {key: value if key in own else renamed(value) for key, value in effects.items()}
