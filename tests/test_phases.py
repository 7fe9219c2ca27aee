"""Deploy phases on a real PostgreSQL: examples/phases (the example application's rename of
cars.colour to cars.color, as two Alembic branches labelled pre and post) run one phase at a
time, the old release writing between them; the order enforced; a project with no phases
as before; the safety report strict about a contraction in the pre phase."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import ROOT, Database, run_alembic, run_migrator
from test_projects import alembic_init_project

from migrator import phases

pytestmark = pytest.mark.both_drivers

EXAMPLE = ROOT / "examples" / "phases"
TRUNK = "c3f9b7d21a58"  # the example application's head: where the two branches split
PRE = "5e1f0a2b7c39"  # add cars.color, copied from colour
POST = "9a4d6c8e2f15"  # drop cars.colour (depends on PRE)


def env_for(
    database: Database, ini: Path = EXAMPLE / "alembic.ini", **extra: str
) -> dict[str, str]:
    return {**database.env, "MIGRATOR_CONFIG": str(ini), **extra}


def columns(database: Database) -> set[str]:
    rows = database.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'cars'"
    )
    return {row[0] for row in rows}


def test_pre_then_post_renames_a_column_while_the_old_release_keeps_writing(
    database: Database,
) -> None:
    env = env_for(database)
    assert run_migrator("upgrade", TRUNK, env=env).status == 0  # the release before
    database.query("INSERT INTO cars (make, model, colour) VALUES ('Fiat', '500', 'red')")

    pre = run_migrator("upgrade", "--phase", "pre", env=env)

    assert pre.status == 0, pre.output
    assert f"phase pre: up to {PRE}" in pre.stderr
    assert database.revision() == PRE
    assert {"colour", "color"} <= columns(database)  # the old release still reads colour
    # The rollout: the old release, which knows only colour, writes meanwhile.
    database.query("INSERT INTO cars (make, model, colour) VALUES ('Kia', 'Ceed', 'blue')")

    post = run_migrator("upgrade", env={**env, "MIGRATOR_PHASE": "post"})

    assert post.status == 0, post.output
    # As plain Alembic leaves it: POST depends on PRE, so its row stands for both.
    assert database.revision() == POST
    assert "colour" not in columns(database)
    cars = database.query("SELECT model, color FROM cars ORDER BY id")
    assert [tuple(car) for car in cars] == [("500", "red"), ("Ceed", "blue")]
    ledger = database.query("SELECT revision, outcome FROM migrator_ledger ORDER BY id")
    assert [tuple(row) for row in ledger][-2:] == [(PRE, "applied"), (POST, "applied")]

    again = run_migrator("upgrade", "--phase", "post", env=env)
    assert again.status == 0 and "nothing to do" in again.stderr, again.output
    current = json.loads(run_migrator("current", "--json", env=env).stdout)
    assert (current["current"], current["at_head"], current["pending"]) == ([POST], True, 0)


def test_the_post_phase_before_the_pre_phase_is_refused_naming_both(database: Database) -> None:
    env = env_for(database)
    assert run_migrator("upgrade", TRUNK, env=env).status == 0

    post = run_migrator("upgrade", "--phase", "post", env=env)
    planned = run_migrator("plan", "upgrade", "head", "--phase", "post", env=env)

    assert post.status == 2, post.output
    (line,) = [line for line in post.stderr.splitlines() if "ERROR" in line]
    assert (
        f"MIGRATOR_PHASE=post: post revision {POST} depends on pre revision {PRE}, not applied "
        "yet: run the pre phase first (upgrade --phase pre); nothing ran"
    ) in line
    assert "Traceback" not in post.stderr
    assert planned.status == 2 and f"depends on pre revision {PRE}" in planned.stderr
    assert database.revision() == TRUNK
    assert "color" not in columns(database)


def test_plan_shows_each_pending_revisions_phase(database: Database) -> None:
    env = env_for(database)
    assert run_migrator("upgrade", TRUNK, env=env).status == 0

    text = run_migrator("plan", "upgrade", "heads", env=env)
    as_json = run_migrator("plan", "upgrade", "heads", "--json", env=env)
    pre_only = run_migrator("plan", "upgrade", "head", "--phase", "pre", "--json", env=env)

    assert text.status == 0, text.output
    assert text.stdout.splitlines()[1:] == [
        f"  1. {PRE}  add cars.color, copied from colour  [pre]",
        f"  2. {POST}  drop cars.colour  [post]",
    ]
    planned = json.loads(as_json.stdout)["revisions"]
    assert [(step["revision"], step["phase"]) for step in planned] == [(PRE, "pre"), (POST, "post")]
    assert [step["revision"] for step in json.loads(pre_only.stdout)["revisions"]] == [PRE]
    assert database.revision() == TRUNK  # a plan changes nothing


def test_without_a_phase_everything_runs_and_plain_alembic_agrees(database: Database) -> None:
    """Outside a deploy (a developer's database, CI): `upgrade heads` runs both phases, and
    plain Alembic sees the same two heads."""
    result = run_migrator("upgrade", "heads", env=env_for(database))

    assert result.status == 0, result.output
    assert database.revision() == POST
    current = run_alembic("-c", str(EXAMPLE / "alembic.ini"), "current", cwd=ROOT, env=database.env)
    assert current.returncode == 0, current.stderr
    assert POST in current.stdout.split()
    assert run_migrator("check", env=env_for(database)).status == 0  # the models match


def test_a_project_without_phases_is_all_pre_and_has_nothing_for_post(
    database: Database,
) -> None:
    env = {**database.env}  # the example application: no branch labelled post

    post = run_migrator("upgrade", "--phase", "post", env=env)
    assert post.status == 0, post.output
    assert "no revision of this project is in the post phase" in post.stderr
    assert database.revision() is None

    pre = run_migrator("upgrade", "head", env={**env, "MIGRATOR_PHASE": "pre"})
    assert pre.status == 0, pre.output
    assert database.revision() == TRUNK
    plain = run_migrator("plan", "downgrade", "-1", env=env)
    assert "[pre]" not in plain.stdout  # no phases, no phase column


@pytest.mark.parametrize(
    ("arguments", "extra", "says"),
    [
        (("downgrade", "base"), {"MIGRATOR_PHASE": "pre"}, "only an upgrade runs in phases"),
        (("upgrade", TRUNK, "--phase", "pre"), {}, "upgrades to the phase's own head"),
        (("upgrade",), {"MIGRATOR_PHASE": "during"}, "MIGRATOR_PHASE: 'during' is not one of"),
    ],
    ids=["downgrade", "a target", "no such phase"],
)
def test_a_phase_that_cannot_work_is_refused_before_anything_runs(
    database: Database, arguments: tuple[str, ...], extra: dict[str, str], says: str
) -> None:
    result = run_migrator(*arguments, env=env_for(database, **extra))

    assert result.status == 2, result.output
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert database.revision() is None


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of examples/phases (for a test that writes beside it: its manifest), its
    alembic.ini."""
    copy = tmp_path / "phases"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    ini = copy / "alembic.ini"
    ini.write_text(ini.read_text().replace("%(here)s/../..", str(ROOT)))
    return ini


@pytest.fixture
def contracting_too_soon(example: Path) -> Path:
    """examples/phases with a pre revision that drops cars.make: a contraction in the pre
    phase, while the old release still reads the column."""
    copy, ini = example.parent, example
    (copy / "alembic" / "versions" / "7b7b7b7b7b7b_drop_cars_make.py").write_text(
        '"""drop cars.make"""\n\n'
        "from alembic import op\n\n"
        'revision = "7b7b7b7b7b7b"\n'
        f'down_revision = "{PRE}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.drop_column("cars", "make")\n\n\n'
        "def downgrade() -> None:\n"
        "    import sqlalchemy as sa\n\n"
        '    op.add_column("cars", sa.Column("make", sa.String()))\n'
    )
    return ini


def test_a_drop_in_the_pre_phase_is_an_error_and_the_same_drop_after_it_is_not(
    database: Database, contracting_too_soon: Path
) -> None:
    env = env_for(database, contracting_too_soon, MIGRATOR_SAFETY_MEASURE="deploy")
    assert run_migrator("upgrade", TRUNK, env=env).status == 0
    database.query("INSERT INTO cars (make, model, colour) VALUES ('Fiat', '500', 'red')")

    weighed = run_migrator("plan", "upgrade", "heads", "--safety", "--json", env=env)
    blocked = run_migrator("upgrade", "--phase", "pre", env={**env, "MIGRATOR_SAFETY": "block"})

    assert weighed.status == 0, weighed.output
    findings = json.loads(weighed.stdout)["safety"]["findings"]
    drops = {f["revision"]: f for f in findings if f["rule"] == "drop-column"}
    assert drops["7b7b7b7b7b7b"]["severity"] == "error"
    assert "in the pre phase" in drops["7b7b7b7b7b7b"]["what"]
    # The post phase's own drop, on the same table with the same one row: weighed as ever.
    assert drops[POST]["severity"] == "warning"
    assert blocked.status == 8, blocked.output
    assert "drop-column on public.cars in 7b7b7b7b7b7b" in blocked.stderr
    assert database.revision() == TRUNK


def test_verify_climbs_both_phases_heads_and_the_models_match(
    database: Database, example: Path
) -> None:
    """A phased project has two heads by design: verify takes them as one whole."""
    result = run_migrator("verify", "--json", env=env_for(database, example))

    assert result.status == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["heads"]) == sorted([PRE, POST])
    assert [stair["revision"] for stair in report["stairs"]][-2:] == [PRE, POST]
    assert report["models"] == []


def test_the_documented_alembic_commands_make_a_phased_project(tmp_path: Path) -> None:
    """docs/phases.md's `alembic revision` lines, run on a copy of the example application,
    make the example's two revisions, phased as the migrator reads them."""
    project = tmp_path / "project"
    for part in ("alembic", "persistence"):
        shutil.copytree(ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", project / "alembic.ini")
    block = (ROOT / "docs" / "phases.md").read_text().split("```\nalembic revision", 1)[1]
    lines = ("alembic revision" + block.split("```", 1)[0]).splitlines()

    for line in lines:
        ran = run_alembic(*shlex.split(line)[1:], cwd=project)
        assert ran.returncode == 0, ran.stderr

    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "alembic"))
    script = ScriptDirectory.from_config(config)
    pre, post = script.get_revision(PRE), script.get_revision(POST)
    assert pre is not None and post is not None
    assert phases.phased(script) and phases.two_phase_heads(script)
    assert (phases.phase_of(pre), phases.phase_of(post)) == ("pre", "post")
    assert post.dependencies == PRE and post.down_revision == TRUNK
    assert phases.phase_of(script.get_revision(TRUNK)) == "pre"  # the history before the split


def test_an_empty_database_is_told_the_pre_revision_the_post_phase_needs(
    database: Database,
) -> None:
    result = run_migrator("upgrade", "--phase", "post", env=env_for(database))
    empty = run_migrator(
        "plan", "upgrade", "head", "--phase", "post", "--json", env=database.env
    )  # the example application: nothing is labelled post

    assert result.status == 2, result.output
    assert f"post revision {POST} depends on pre revision {PRE}, not applied yet" in result.stderr
    assert empty.status == 0, empty.output
    assert json.loads(empty.stdout)["revisions"] == []
    assert database.revision() is None


def test_phases_on_an_unchanged_alembic_init_project(database: Database, tmp_path: Path) -> None:
    """Not our example: `alembic init`'s env.py as written, the branches made with Alembic's
    own commands, an expand (pre) and a contract (post) a developer wrote."""
    ini = alembic_init_project(tmp_path)  # revision w1 creates widgets (id)
    made = {
        "p1": ("--head", "w1", "--branch-label", "pre"),
        "q1": ("--head", "w1", "--branch-label", "post", "--splice", "--depends-on", "p1"),
    }
    upgrades = {  # the expand adds a column; the contract drops the one it replaces
        "p1": 'op.add_column("widgets", sa.Column("title", sa.String()))',
        "q1": 'op.drop_column("widgets", "id")',
    }
    for revision, arguments in made.items():
        run_alembic("revision", "-m", revision, *arguments, "--rev-id", revision, cwd=tmp_path)
        (path,) = (tmp_path / "migrations" / "versions").glob(f"{revision}_*.py")
        body = f"def upgrade() -> None:\n    {upgrades[revision]}\n"
        path.write_text(path.read_text().replace("def upgrade() -> None:\n", body, 1))
    env = {**database.env, "MIGRATOR_CONFIG": str(ini)}

    too_soon = run_migrator("upgrade", "--phase", "post", env=env)
    pre = run_migrator("upgrade", "--phase", "pre", env=env)
    post = run_migrator("upgrade", "--phase", "post", env=env)

    assert too_soon.status == 2, too_soon.output
    assert "post revision q1 depends on pre revision p1, not applied yet" in too_soon.stderr
    assert pre.status == 0 and post.status == 0, pre.output + post.output
    columns = database.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'"
    )
    assert {row[0] for row in columns} == {"title"}
    assert database.revision() == "q1"
