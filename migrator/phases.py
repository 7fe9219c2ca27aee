"""Deploy phases: the revisions that run before the new release rolls out (pre: expand) and
those that run once no pod of the old release is left (post: contract).

A project says a revision's phase the way Alembic already can: two branches, labelled `pre`
and `post` (`alembic revision --head post@head ...`), so plain Alembic sees two heads and
`alembic upgrade heads` still runs everything. A revision is in the post phase when it is on
the branch labelled `post` (Alembic carries a label to every revision above the labelled
one); every other revision, the history from before the branches split included, runs
before the rollout. A project with no revision labelled `post` has one phase, pre.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic.script import Script, ScriptDirectory

from migrator.errors import UsageError

PRE, POST = "pre", "post"


def phased(script: ScriptDirectory) -> bool:
    """Whether the project splits its revisions into phases: a branch labelled post."""
    return any(POST in revision.branch_labels for revision in script.walk_revisions())


def two_phase_heads(script: ScriptDirectory) -> bool:
    """Whether the project's heads are one pre head and one post head: the two heads of a
    phased project, one whole (verify climbs both)."""
    found = [script.get_revision(head) for head in script.get_heads()]
    return sorted(phase_of(head) for head in found if head is not None) == [POST, PRE]


def phase_of(revision: Script) -> str:
    return POST if POST in revision.branch_labels else PRE


def before_the_rollout(script: ScriptDirectory, steps: Sequence[Script]) -> set[str]:
    """The revisions among `steps` that run while the old release still runs: a phased
    project's pre revisions. Without phases, when the old release stops is not known: none."""
    if not phased(script):
        return set()
    return {step.revision for step in steps if phase_of(step) == PRE}


def target(script: ScriptDirectory, phase: str, asked: str) -> str | None:
    """The revision `upgrade --phase PHASE` ends at: the phase's head; None when the project
    has no revision in that phase (a post phase before any revision is labelled post)."""
    if asked not in ("head", "heads"):
        raise UsageError(
            f"MIGRATOR_PHASE={phase} upgrades to the phase's own head, not to {asked}: leave "
            "the target out (or head), or unset MIGRATOR_PHASE (--phase)"
        )
    heads = [script.get_revision(head) for head in script.get_heads()]
    own = [head for head in heads if head is not None and phase_of(head) == phase]
    if len(own) > 1:
        raise UsageError(
            f"MIGRATOR_PHASE={phase}: the project has {len(own)} heads in the {phase} phase "
            f"({', '.join(head.revision for head in own)}): merge them (alembic merge), or "
            "upgrade to one without a phase"
        )
    return own[0].revision if own else None


def refuse_the_other_phase(script: ScriptDirectory, steps: Sequence[Script], phase: str) -> None:
    """A phase runs only its own revisions: a pending revision of the other phase among the
    steps is one that a revision of this phase depends on (its down revision or
    depends_on), not applied yet. Refused, naming a revision of this phase and the one of
    the other it needs directly; nothing runs."""
    strays = {step.revision: step for step in steps if phase_of(step) != phase}
    if not strays:
        return
    needing, needed = next(
        (
            (step, strays[below])
            for step in steps
            if phase_of(step) == phase
            for below in (*_names(step.dependencies), *_names(step.down_revision))
            if below in strays
        ),
        (None, next(iter(strays.values()))),
    )
    other = phase_of(needed)
    needed_by = f"{phase} revision {needing.revision}" if needing else f"the {phase} phase"
    raise UsageError(
        f"MIGRATOR_PHASE={phase}: {needed_by} depends on {other} revision {needed.revision}, "
        f"not applied yet: run the {other} phase first (upgrade --phase {other}); nothing ran"
    )


def _names(revisions: str | Sequence[str] | None) -> tuple[str, ...]:
    if revisions is None:
        return ()
    return (revisions,) if isinstance(revisions, str) else tuple(revisions)
