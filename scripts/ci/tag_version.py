"""The release's version from its tag: `v` + migrator/__init__.py's __version__, or a one-line
error (exit 1). The release workflow runs it first, so a tag that does not match the code
publishes nothing; scripts/ci/release-dry-run.sh runs it the same way.

    python3 scripts/ci/tag_version.py v0.1.0     prints 0.1.0
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

INIT = Path(__file__).resolve().parents[2] / "migrator" / "__init__.py"


def code_version() -> str:
    """__version__ as the file assigns it (read, not imported: no dependency needed)."""
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise SystemExit(f"release: no __version__ string in {INIT}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tag_version.py TAG (v<version>, e.g. v0.1.0)", file=sys.stderr)
        return 2
    tag, version = argv[0].removeprefix("refs/tags/"), code_version()
    if tag != f"v{version}":
        print(
            f"release: tag {tag} does not match migrator/__init__.py __version__ {version} "
            f"(expected tag v{version})",
            file=sys.stderr,
        )
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
