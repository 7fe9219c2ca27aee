"""The action's entrypoint: inputs (INPUT_*) to the migrator's environment; its summary to
the step's outputs (GITHUB_OUTPUT); its exit status as the step's."""

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from migrator.masking import passwords_in, spellings


def given(name: str, default: str = "") -> str:
    # The runner passes inputs as INPUT_<NAME>, upper-cased, dashes kept.
    return os.environ.get(f"INPUT_{name.upper()}", default).strip()


url = given("database-url")
# Every spelling the migrator, or anything it runs, could print: registered before it runs.
try:
    passwords = passwords_in(make_url(url))
except Exception:  # not a URL: the migrator says so (exit 2); the whole value stays secret
    passwords = []
for secret in sorted({url, *(form for password in passwords for form in spellings(password))}):
    for line in secret.splitlines():  # the runner masks one line at a time
        if line.strip():
            print(f"::add-mask::{line}", flush=True)

environment = {
    **os.environ,
    "DATABASE_URL": url,
    "MIGRATOR_COMMAND": given("command", "upgrade"),
    "MIGRATOR_TARGET": given("target", "head"),
    "MIGRATOR_WAIT_TIMEOUT": given("wait-timeout", "60"),
    "MIGRATOR_ALLOW_DOWNGRADE": given("allow-downgrade", "false"),
    "MIGRATOR_CONFIG": str(Path(given("config", "alembic.ini")).absolute()),
}
process = subprocess.Popen(["migrator"], env=environment, stderr=subprocess.PIPE, text=True)
assert process.stderr is not None
summary: dict[str, str] = {}
for line in process.stderr:
    sys.stderr.write(line)
    if "summary command=" in line:
        summary = {
            key: "" if value == "-" else value
            for key, value in re.findall(r"(\w+)=([^\s\"]+)", line)
        }
status = process.wait()

with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as outputs:
    outputs.write(f"from-revision={summary.get('from', '')}\n")
    outputs.write(f"to-revision={summary.get('to', '')}\n")
    outputs.write(f"applied={summary.get('applied', '0')}\n")
sys.exit(status)
