"""The project's manifest: what a no-op deploy needs to know of the project (its head, the
version table env.py names), written once at image build time (`migrator manifest`) and
keyed by a hash of the project's files, so that a run can trust it by hashing the files,
without importing them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from migrator import __version__, project_files
from migrator.errors import AccessDenied, UsageError

NAME = "migrator-manifest.json"


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
) -> Path:
    document = {
        "migrator": __version__,
        "hash": fingerprint(alembic_ini, directories, files),
        "directories": sorted(directories),
        "files": sorted(files),
        "heads": sorted(heads),
        "version_table": version_table,
        "version_table_schema": version_table_schema,
    }
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
    if document.get("migrator") != __version__:
        raise ValueError(f"it was written by migrator {document.get('migrator')}")
    if fingerprint(alembic_ini, document["directories"], document["files"]) != document["hash"]:
        raise ValueError("the project's files changed since it was written")
    return document
