"""The files of an Alembic project, found loudly where Alembic is quiet.

Alembic walks a version directory with os.walk, which skips a directory it cannot list
without a word: an unreadable versions/ looks like a project without revisions (a run says
"at base", or calls the database's revision unknown). configparser likewise skips an
alembic.ini it cannot open. Here a file or directory the migrator's user cannot read is a
PermissionError naming it, which the commands turn into exit 6.

Standard library only: the no-op fast path (manifest.py) walks the project with it without
importing Alembic.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from migrator.errors import AccessDenied

_BYTECODE_CACHE = "__pycache__"
_PYC_HEADER = 16  # magic, flags, source mtime and size (PEP 552)


def files_under(directory: Path) -> Iterator[Path]:
    """Every file under `directory` that Alembic could load, in a fixed order: symlinks are
    followed (to files and to directories, each real directory walked once, so a loop ends);
    what Python writes at run time is left out (_written_for_a_source). A missing directory
    has no files (Alembic skips it too)."""
    try:
        os.stat(directory)  # raises PermissionError when a directory above it is closed
    except FileNotFoundError:
        return
    yield from _walk(directory, frozenset(), set())


def _walk(directory: Path, sources: frozenset[str], seen: set[str]) -> Iterator[Path]:
    """`sources`: the stems of the files in the directory above (for `__pycache__`)."""
    real = os.path.realpath(directory)
    if real in seen:
        return
    seen.add(real)
    with os.scandir(directory) as listing:  # raises, naming the directory, if unreadable
        entries = sorted(listing, key=lambda entry: entry.name)
    files = [entry for entry in entries if not entry.is_dir()]
    stems = frozenset(_stem(entry.name) for entry in files)
    for entry in files:
        if not _written_for_a_source(directory, entry.name, sources):
            yield directory / entry.name
    for entry in entries:
        if entry.is_dir():
            yield from _walk(directory / entry.name, stems, seen)


def _written_for_a_source(directory: Path, name: str, sources: frozenset[str]) -> bool:
    """Whether `name` in `directory` is the bytecode of a file in the directory above, in
    `__pycache__`: Python writes it when it imports that source (so it appears after the
    manifest is written), and Alembic never loads it in the source's place. Every other
    bytecode counts: `sourceless = true` loads legacy `.pyc` files and the `__pycache__`
    bytecode of a source that is gone, and Alembic runs env.py's when env.py is gone."""
    return directory.name == _BYTECODE_CACHE and _stem(name) in sources


def _stem(name: str) -> str:
    """What Alembic (script/base.py, `_list_py_dir`) compares a `__pycache__` file by:
    `a1_create.cpython-311.pyc` is the bytecode of `a1_create.py` beside `__pycache__`."""
    return name.split(".")[0]


def require_readable(paths: Iterable[Path]) -> None:
    """Raise PermissionError for the first file in `paths` the migrator's user cannot open;
    a missing file is left to Alembic, which says what it missed."""
    for path in paths:
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            continue


def require_listable(directories: Iterable[Path], recursive: bool) -> None:
    """Raise PermissionError for the first directory Alembic would walk (with
    `recursive_version_locations`, every one below, as Alembic walks them: symlinked ones
    not) that the migrator's user cannot list. Only the permission is checked here: what
    else os.walk meets (a missing directory) Alembic meets the same way."""
    for directory in directories:
        for _root, _directories, _files in os.walk(directory, onerror=_raise_permission):
            if not recursive:
                break


def _raise_permission(error: OSError) -> None:
    if isinstance(error, PermissionError):
        raise error


def unreadable(error: PermissionError) -> AccessDenied:
    """The one line for a project file the migrator's user cannot read."""
    return AccessDenied(
        f"{error.filename}: permission denied: the migrator (uid {os.getuid()}) cannot read "
        "this part of the project"
    )


def revision_checksum(path: str | Path) -> str:
    """A revision module's code without comments, docstrings or formatting (its AST), hashed:
    what the deploy ledger compares, so a reformat or a fixed comment is not an edit. A
    sourceless revision (bytecode only) is its code object, without the header's timestamp."""
    data = Path(path).read_bytes()
    if Path(path).suffix == ".pyc":
        return hashlib.sha256(data[_PYC_HEADER:]).hexdigest()
    tree = ast.parse(data)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(_canonical(tree).encode()).hexdigest()


def _canonical(node: object) -> str:
    """The tree as text, the same on every Python: each node's type and the fields it sets.
    Not ast.dump, whose text changes between versions (3.13 leaves out empty fields; 3.12
    added `type_params`, empty unless a revision declares type parameters)."""
    if isinstance(node, list):
        return "[" + ", ".join(_canonical(item) for item in node) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    fields = [
        f"{name}={_canonical(value)}"
        for name, value in ast.iter_fields(node)
        if value is not None and value != []
    ]
    return f"{type(node).__name__}({', '.join(fields)})"
