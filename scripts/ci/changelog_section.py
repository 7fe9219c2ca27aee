"""The body of one version's section of CHANGELOG.md (Keep a Changelog: `## [1.2.0] - date`
up to the next `## ` heading or the link definitions at the end), for the GitHub release's
notes. A version with no section, or an empty one, is a one-line error (exit 1): a release
is not published without its notes.

    python3 scripts/ci/changelog_section.py 0.1.0 > notes.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[2] / "CHANGELOG.md"
LINK_DEFINITION = re.compile(r"^\[[^\]]+\]: \S+")


def section(text: str, version: str) -> str:
    heading = re.compile(rf"^## \[{re.escape(version)}\](?: |$)")
    lines: list[str] | None = None
    for line in text.splitlines():
        if lines is None:
            if heading.match(line):
                lines = []
        elif line.startswith("## ") or LINK_DEFINITION.match(line):
            break
        else:
            lines.append(line)
    return "\n".join(lines or []).strip()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: changelog_section.py VERSION (e.g. 0.1.0)", file=sys.stderr)
        return 2
    body = section(CHANGELOG.read_text(), argv[0])
    if not body:
        print(
            f"release: CHANGELOG.md has no section, or an empty one, for [{argv[0]}]",
            file=sys.stderr,
        )
        return 1
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
