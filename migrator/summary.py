"""What a run did: its command, where the database was and is, what ran, how it ended.

Commands fill it in as they go, so that a failure still reports what happened; the log's
last line, the termination message and MIGRATOR_SUMMARY_FILE say it (migrator.logs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    """What the run did; commands fill it in as they go, so a failure still reports it."""

    command: str
    from_revision: str | None = None
    to_revision: str | None = None
    applied: int = 0
    status: str = "ok"
    # The run's exit status (0, or its error's: migrator.errors); the process exits with it.
    exit_status: int = 0
    started: float = field(default_factory=time.monotonic)
    # Each revision that ran: revision, direction, seconds; or, for `plan`, that would run.
    revisions: list[dict[str, Any]] = field(default_factory=list)
    # The deploy ledger's newest row when the run ended (migrator.ledger), as the summary
    # file shows it: what last happened to the database, and by which deploy.
    ledger: dict[str, Any] | None = None
    # `fleet`: how many targets, and how many of them ok, failed and skipped.
    fleet: dict[str, int] | None = None

    def fields(self) -> dict[str, Any]:
        if self.fleet is not None:
            return {
                "command": self.command,
                **self.fleet,
                "seconds": round(time.monotonic() - self.started, 3),
                "status": self.status,
            }
        # A downgrade reverts: said so, and `applied` kept for what reads the JSON.
        counted = {"reverted": self.applied} if self.command == "downgrade" else {}
        return {
            "command": self.command,
            "from": self.from_revision,
            "to": self.to_revision,
            **counted,
            "applied": self.applied,
            "seconds": round(time.monotonic() - self.started, 3),
            "status": self.status,
        }
