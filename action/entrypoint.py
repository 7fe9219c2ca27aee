"""The action's entrypoint: inputs (INPUT_*) to the migrator's command and environment; the
migrator's JSON summary (MIGRATOR_SUMMARY_FILE) to the step's outputs (GITHUB_OUTPUT) and
to a Markdown job summary (GITHUB_STEP_SUMMARY); its exit status as the step's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from migrator.config import truth
from migrator.masking import passwords_in, spellings


def given(name: str, default: str = "") -> str:
    # The runner passes inputs as INPUT_<NAME>, upper-cased, dashes kept.
    return os.environ.get(f"INPUT_{name.upper()}", default).strip() or default


def register_masks(url: str) -> None:
    """Every spelling the migrator, or anything it runs, could print: registered before it
    runs, so the runner hides them in the log whatever happens next."""
    try:
        passwords = passwords_in(make_url(url))
    except Exception:  # not a URL: the migrator says so (exit 2); the whole value stays secret
        passwords = []
    for secret in sorted({url, *(form for password in passwords for form in spellings(password))}):
        for line in secret.splitlines():  # the runner masks one line at a time
            if line.strip():
                print(f"::add-mask::{line}", flush=True)


def command_line(
    command: str, target: str, dry_run: bool, safety: str, phase: str = ""
) -> tuple[list[str], dict[str, str]]:
    """The migrator's arguments and the variables that say what to run. A dry run (`command:
    plan`, or `dry-run: true` with upgrade/downgrade) is `migrator plan DIRECTION TARGET
    --markdown`: the revisions that would run, nothing changed, and for an upgrade the safety
    report (unless `safety: off`). Everything else goes through
    MIGRATOR_COMMAND/MIGRATOR_TARGET, as a Job runs it (a downgrade then needs
    allow-downgrade). A phase is MIGRATOR_PHASE for both: the migrator validates it and says
    which commands take one (a bad value is its own exit 2)."""
    phased = {"MIGRATOR_PHASE": phase} if phase else {}
    if command == "plan" or (dry_run and command in ("upgrade", "downgrade")):
        direction = "upgrade" if command == "plan" else command
        weighed = ["--safety"] if direction == "upgrade" and safety != "off" else []
        return ["plan", direction, target, "--markdown", *weighed], phased
    return [], {"MIGRATOR_COMMAND": command, "MIGRATOR_TARGET": target, **phased}


def read_summary(path: Path) -> dict[str, Any]:
    """The migrator's summary, or {} when it wrote none (bad input: exit 2 before any run)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def outputs_for(
    summary: dict[str, Any], status: int, requested: str, phase: str = ""
) -> dict[str, str]:
    revisions = summary.get("revisions") or []
    planned = summary.get("command") == "plan"
    return {
        "command": str(summary.get("command") or requested),
        "phase": phase,
        "from-revision": str(summary.get("from") or ""),
        "to-revision": str(summary.get("to") or ""),
        "applied": str(summary.get("applied") or 0),
        "planned": str(len(revisions) if planned else 0),
        "revisions": json.dumps(revisions, separators=(",", ":")),
        "status": str(summary.get("status") or "failed"),
        "exit-code": str(status),
        "seconds": str(summary.get("seconds") or 0),
    }


def cell(value: Any) -> str:
    """A value as one Markdown table cell: no line breaks, no column separators."""
    text = " ".join(str(value if value is not None else "").split())
    return text.replace("\\", "\\\\").replace("|", "\\|") or " "


def step_summary(
    summary: dict[str, Any],
    status: int,
    requested: str,
    direction: str,
    target: str,
    config: str,
    plan: str = "",
    phase: str = "",
    reason: str = "",
) -> str:
    """The Markdown the job's summary page shows: where the database was and is, each
    revision with its duration, or the plan (`plan`: the migrator's own Markdown, with the
    safety report); the phase, when one was given; a failure's own error line."""
    revisions = summary.get("revisions") or []
    command = summary.get("command") or requested
    outcome = "ok" if status == 0 else f"failed (exit {status})"
    phased = f", phase `{phase}`" if phase else ""
    if command == "plan" and status == 0:
        title = (
            f"### migrator plan: {direction} to `{target}`{phased}: "
            f"{len(revisions)} revision(s) would run"
        )
    else:
        title = f"### migrator {command}{phased}: {outcome}"
    lines = [title, ""]
    said = ["The migrator said:", "", "> " + " ".join(reason.split()), ""] if reason else []
    if not summary:
        lines += [
            f"The migrator exited {status} before it ran (a usage or configuration error);"
            " the step's log says why.",
            "",
            *said,
        ]
        return "\n".join(lines) + "\n"
    if status != 0:
        lines += said or [f"The step's log says why (exit {status}).", ""]
    lines += [
        "| from | to | applied | seconds | status | config |",
        "| --- | --- | --- | --- | --- | --- |",
        "| "
        + " | ".join(
            cell(value)
            for value in (
                summary.get("from") or "base",
                summary.get("to") or "",
                summary.get("applied", 0),
                summary.get("seconds", ""),
                summary.get("status", ""),
                config,
            )
        )
        + " |",
        "",
    ]
    if command == "plan":
        lines += [
            plan.strip() if revisions else "Nothing would run: the database is at the target."
        ]
    elif revisions:
        lines += [
            "| # | revision | message | direction | seconds |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {position} | `{cell(step.get('revision'))}` | {cell(step.get('message'))} "
            f"| {cell(step.get('direction'))} | {cell(step.get('seconds'))} |"
            for position, step in enumerate(revisions, start=1)
        ]
    elif command in ("upgrade", "downgrade") and status == 0:
        lines += ["Nothing to do: the database was already at the target."]
    lines += ledger_lines(summary.get("ledger"))
    return "\n".join(lines) + "\n"


def ledger_lines(row: dict[str, Any] | None) -> list[str]:
    """The deploy ledger's newest row when the run ended: what last happened to the database,
    when, and by which deploy (a failure's row says why)."""
    if not row:
        return []
    columns = ("revision", "direction", "outcome", "finished_at", "seconds", "deploy", "detail")
    return [
        "",
        "Deploy ledger, newest row:",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        "| " + " | ".join(cell(row.get(column)) for column in columns) + " |",
    ]


def error_line(line: str) -> str | None:
    """The message of one of the migrator's error log lines (text or JSON), else None."""
    text = line.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            return None
        if isinstance(event, dict) and str(event.get("level", "")).lower() == "error":
            return str(event.get("message") or "") or None
        return None
    parts = text.split(maxsplit=2)
    return parts[2] if len(parts) == 3 and parts[1] == "ERROR" else None


def run_migrator(arguments: list[str], environment: dict[str, str]) -> tuple[int, str, str]:
    """Run the migrator, its log passed through to the step's log as it comes; returns its
    exit status, its standard output when it is a plan's Markdown (also printed), and its
    last error line (the one-line reason the job summary quotes)."""
    process = subprocess.Popen(
        ["migrator", *arguments],
        env=environment,
        stdout=subprocess.PIPE if arguments else None,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    reasons: list[str] = []

    def relay() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            reason = error_line(line)
            if reason:
                reasons.append(reason)

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    # A plan's Markdown goes to the job summary, and to the log as well.
    plan = process.stdout.read() if process.stdout is not None else ""
    status = process.wait()
    relaying.join()
    print(plan, end="", flush=True)
    return status, plan, reasons[-1] if reasons else ""


def append(variable: str, text: str) -> None:
    """Append to a runner file command (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY), when there is one."""
    path = os.environ.get(variable)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(text)


def main() -> int:
    url = given("database-url")
    register_masks(url)
    command = given("command", "upgrade")
    target = given("target", "head")
    dry_run = truth(given("dry-run", "false")) is True
    config = given("config", "alembic.ini")
    safety = given("safety", "warn")
    phase = given("phase")
    arguments, chosen = command_line(command, target, dry_run, safety, phase)
    direction = arguments[1] if arguments else command

    handle, name = tempfile.mkstemp(prefix="migrator-summary-", suffix=".json")
    os.close(handle)
    summary_file = Path(name)
    # What says what to run is ours alone: a MIGRATOR_COMMAND/TARGET/PHASE in the step's env
    # would otherwise disagree with the arguments of a plan (exit 2) or replace the inputs.
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MIGRATOR_COMMAND", "MIGRATOR_TARGET", "MIGRATOR_PHASE")
    }
    environment = {
        **inherited,
        **chosen,
        "DATABASE_URL": url,
        "MIGRATOR_WAIT_TIMEOUT": given("wait-timeout", "60"),
        "MIGRATOR_LOCK_TIMEOUT": given("lock-timeout", "300"),
        "MIGRATOR_ALLOW_DOWNGRADE": given("allow-downgrade", "false"),
        "MIGRATOR_SAFETY": safety,
        "MIGRATOR_CONFIG": str(Path(config).absolute()),
        "MIGRATOR_SUMMARY_FILE": str(summary_file),
    }
    try:
        status, plan, reason = run_migrator(arguments, environment)
        summary = read_summary(summary_file)
    finally:
        summary_file.unlink(missing_ok=True)

    requested = arguments[0] if arguments else command
    outputs = outputs_for(summary, status, requested, phase)
    append("GITHUB_OUTPUT", "".join(f"{key}={value}\n" for key, value in outputs.items()))
    append(
        "GITHUB_STEP_SUMMARY",
        step_summary(summary, status, requested, direction, target, config, plan, phase, reason),
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
