"""Logging: one line per event on stderr, text or JSON, every secret masked; the summary line
(what the run did: migrator.summary) as the last of them."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from migrator.masking import Mask
from migrator.summary import Summary

log = logging.getLogger("migrator")


# A failing 5 MB statement must not give 5 MB of log: each line is cut, after masking (a cut
# first could leave part of a password).
LONGEST_LINE = 2000


def shorten(text: str) -> str:
    return "\n".join(
        line
        if len(line) <= LONGEST_LINE
        else f"{line[:LONGEST_LINE]}... ({len(line) - LONGEST_LINE} characters cut)"
        for line in text.split("\n")
    )


class TextFormatter(logging.Formatter):
    def __init__(self, mask: Mask, tenant: str | None = None) -> None:
        named = "" if tenant is None else f"[{tenant.replace('%', '%%')}] "
        super().__init__(f"%(asctime)s %(levelname)-7s {named}%(message)s", "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime
        self.mask = mask
        self.tenant = tenant

    def format(self, record: logging.LogRecord) -> str:
        return shorten(self.mask(super().format(record)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{super().formatTime(record, datefmt or self.datefmt)}.{int(record.msecs):03d}Z"


class JsonFormatter(TextFormatter):
    """One JSON object per line: time, level, message, and the event's own fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        if self.tenant is not None:
            entry["tenant"] = self.tenant
        entry.update(getattr(record, "fields", {}))
        if record.name != log.name:
            entry["logger"] = record.name
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        masked = {
            key: shorten(self.mask(value)) if isinstance(value, str) else value
            for key, value in entry.items()
        }
        return json.dumps(masked, default=str)


def setup_logging(
    log_format: str, level: str, mask: Mask | None = None, tenant: str | None = None
) -> None:
    """Log lines on stderr; each names `tenant` when given (a fleet's target)."""
    mask = mask or Mask()
    handler = logging.StreamHandler(sys.stderr)
    formatter = (JsonFormatter if log_format == "json" else TextFormatter)(mask, tenant)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    logging.captureWarnings(True)  # a library's warning is a log line too, in the log's format
    # Alembic and SQLAlchemy speak only of warnings unless asked to debug.
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
    # The pool logs a traceback when it cannot reset a connection that is gone: the run says
    # itself what the lost connection meant.
    logging.getLogger("sqlalchemy.pool").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.CRITICAL
    )


def report_summary(
    summary: Summary, mask: Mask, termination_log: Path, summary_file: Path | None = None
) -> None:
    """The last log line; also Kubernetes' termination message, so `kubectl describe` shows it,
    and, when asked, a JSON file for a pipeline to read (MIGRATOR_SUMMARY_FILE)."""
    values = summary.fields()
    said = {k: v for k, v in values.items() if not (k == "applied" and "reverted" in values)}
    words = " ".join(f"{key}={'-' if value is None else value}" for key, value in said.items())
    line = mask(f"summary {words}")
    log.info(line, extra={"fields": {"event": "summary", **values}})
    outputs = [(termination_log, line + "\n")] if termination_log.exists() else []
    if summary_file is not None:
        document = {**values, "revisions": summary.revisions, "ledger": summary.ledger}
        outputs.append((summary_file, mask(json.dumps(document)) + "\n"))
    for path, text in outputs:
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            log.warning("could not write %s: %s", path, error.strerror)


class MaskedStream:
    """stdout for the commands' output (and Alembic's), with every password hidden."""

    def __init__(self, stream: TextIO, mask: Mask) -> None:
        self.stream = stream
        self.mask = mask

    def write(self, text: str) -> int:
        return self.stream.write(self.mask(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


# The lines a no-op deploy writes, written here once: the fast path (fast.py) must say
# exactly what the full path says.
def connecting(masked_url: str) -> None:
    log.info("connecting to %s", masked_url)


def database_ready(seconds: float, version: str) -> None:
    log.info(
        "database ready after %.2f s (PostgreSQL %s)",
        seconds,
        version,
        extra={"fields": {"event": "connected", "server_version": version}},
    )


def nothing_to_do(heads_name: str) -> None:
    log.info("nothing to do: the database is at %s", heads_name)
