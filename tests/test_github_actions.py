"""GitHub Actions: the workflows lint clean, the container action runs as the runner runs it
(one phase at a time, too), the round-trip script CI calls proves a real
upgrade/downgrade/upgrade, and the reusable workflow's phases script proves pre, deploy,
post."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from conftest import (
    HELPER_DRIVER,
    PASSWORD,
    PASSWORD_FORMS,
    ROOT,
    Database,
    docker_build,
    docker_env_flags,
    migrator_env,
    run_migrator,
)

BIN = Path(sys.executable).parent
WORKFLOWS = sorted(str(path) for path in (ROOT / ".github" / "workflows").glob("*.yml"))


def tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True
    )


def test_actionlint_reports_nothing() -> None:
    result = tool("actionlint", *WORKFLOWS)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_zizmor_reports_nothing() -> None:
    result = tool("zizmor", "--offline", "--min-severity", "low", ".github/workflows", "action.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr


def test_workflows_and_action_match_githubs_schemas() -> None:
    workflows = tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *WORKFLOWS)
    action = tool("check-jsonschema", "--builtin-schema", "vendor.github-actions", "action.yml")

    assert workflows.returncode == 0, workflows.stdout
    assert action.returncode == 0, action.stdout


def test_ci_is_least_privilege_pinned_and_bounded() -> None:
    for path in WORKFLOWS:
        workflow = yaml.safe_load(Path(path).read_text())
        assert workflow["permissions"] == {"contents": "read"}, path
        for name, job in workflow["jobs"].items():
            # A job that calls a reusable workflow takes no timeout: its jobs have theirs.
            assert "timeout-minutes" in job or "uses" in job, f"{path}: job {name} has no timeout"
            for step in job.get("steps", []):
                if "uses" in step:
                    ref = step["uses"].split("@")[1]
                    assert re.fullmatch(r"[0-9a-f]{40}", ref), step["uses"]
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert set(ci["jobs"]) == {"lint", "test", "package", "roundtrip", "kind"}
    assert "concurrency" in ci
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    # The jobs' real work is the repository's own scripts, which .ci/run calls too.
    for script in (
        "scripts/ci/lint.sh",
        "scripts/test.sh",
        "scripts/ci/roundtrip.sh",
        "scripts/ci/kind.sh",
        "scripts/ci/package.sh",
    ):
        assert any(run.split()[:1] == [script] for run in runs), script
    # The test job runs scripts/test.sh's two stages side by side: together, every test.
    test_job = ci["jobs"]["test"]
    assert test_job["strategy"]["matrix"]["stage"] == ["not slow", "slow"]
    assert test_job["steps"][-1]["run"] == 'scripts/test.sh -m "$STAGE"'


def test_every_action_is_pinned_by_sha_with_its_tag_and_one_pin_per_action() -> None:
    pins: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for line in Path(path).read_text().splitlines():
            found = re.match(r"\s*-? ?uses: ([\w./-]+)@(\S+)(.*)", line)
            if found:
                name, ref, comment = found.groups()
                assert re.fullmatch(r"[0-9a-f]{40}", ref), line
                assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), f"no tag comment: {line}"
                pins.setdefault(name, set()).add(f"{ref}{comment}")
    assert all(len(refs) == 1 for refs in pins.values()), pins
    # The node24 majors of GitHub's own actions.
    assert pins["actions/checkout"] == {"de0fac2e4500dabe0009e67214ff5f5447ce83dd # v6.0.2"}
    assert pins["actions/setup-python"] == {"a309ff8b426b58ec0e2a45f0f869d46889d02405 # v6.2.0"}


def test_the_release_builds_amd64_and_arm64() -> None:
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())["jobs"][
        "image"
    ]
    uses = [step.get("uses", "").split("@")[0] for step in release["steps"]]
    build = next(s for s in release["steps"] if s.get("uses", "").startswith("docker/build-push"))

    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert uses.index("docker/setup-qemu-action") < uses.index("docker/setup-buildx-action")


def test_the_reusable_roundtrip_installs_the_locked_migrator_at_its_own_commit() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "roundtrip.yml").read_text())
    steps = workflow["jobs"]["verify"]["steps"]
    own = next(s for s in steps if s.get("with", {}).get("path") == ".migrator")
    install = next(s["run"] for s in steps if "pip install" in s.get("run", ""))

    assert own["with"]["repository"] == "${{ job.workflow_repository }}"
    assert own["with"]["ref"] == "${{ job.workflow_sha }}"
    assert "pip install --require-hashes -r .migrator/requirements.lock" in install
    assert "pip install --no-deps ./.migrator" in install
    assert "git+" not in install and "@v" not in install


def test_the_reusable_roundtrip_proves_the_phases_with_the_scripts_at_its_own_commit() -> None:
    """`phases: true` runs the phases script of the migrator's own checkout (the commit the
    caller pinned), with the caller's deploy command through the environment (never spliced
    into the script), after verify."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "roundtrip.yml").read_text())
    inputs = workflow[True]["workflow_call"]["inputs"]  # PyYAML reads the `on` key as True
    steps = workflow["jobs"]["verify"]["steps"]
    verify = next(s for s in steps if s.get("name") == "migrator verify")
    phases = next(s for s in steps if "phases.sh" in s.get("run", ""))

    assert (inputs["phases"]["type"], inputs["phases"]["default"]) == ("boolean", False)
    assert (inputs["deploy"]["type"], inputs["deploy"]["default"]) == ("string", "")
    assert phases["if"] == "inputs.phases"
    assert phases["run"] == "bash .migrator/scripts/ci/phases.sh"
    assert phases["env"] == {"DEPLOY_COMMAND": "${{ inputs.deploy }}"}
    assert steps.index(verify) < steps.index(phases)


def build_stage(dockerfile: str) -> str:
    found = re.search(r"^FROM \$\{PYTHON_IMAGE\} AS build\n.*?(?=\n\n)", dockerfile, re.M | re.S)
    assert found, "no build stage"
    return found.group(0)


def test_the_action_builds_from_this_checkout_and_needs_no_published_image() -> None:
    """GitHub builds a container action as `docker build -f <runs.image> <its directory>`
    (actions/runner's ContainerActionHandler), so the action's Dockerfile sits at the root,
    where the context is the repository; its only base is the Python image, and it installs
    the migrator as the root Dockerfile's build stage does."""
    image = yaml.safe_load((ROOT / "action.yml").read_text())["runs"]["image"]
    dockerfile = (ROOT / image).read_text()

    assert image == "action.Dockerfile"  # ends with Dockerfile, or the runner pulls it by name
    assert set(re.findall(r"^FROM (\S+)", dockerfile, re.M)) == {"${PYTHON_IMAGE}"}
    assert build_stage(dockerfile) == build_stage((ROOT / "Dockerfile").read_text())
    assert not (ROOT / "action" / "Dockerfile").exists()


HEAD = "c3f9b7d21a58"


@dataclass
class ActionRun:
    status: int
    log: str
    outputs: dict[str, str]
    step_summary: str


def run_action(
    image: str,
    tmp_path: Path,
    inputs: dict[str, str],
    env: dict[str, str] | None = None,
    checkout: Path = ROOT,
) -> ActionRun:
    """As the runner runs a container action: the checkout mounted as the working
    directory, inputs as INPUT_<NAME> (upper-cased, dashes kept), GITHUB_OUTPUT and
    GITHUB_STEP_SUMMARY files the step appends to."""
    commands = tmp_path / "file_commands"
    commands.mkdir(parents=True)
    (commands / "output").touch()
    (commands / "summary").touch()
    given = {f"INPUT_{name.upper()}": value for name, value in inputs.items()} | (env or {})
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--workdir",
            "/github/workspace",
            "-v",
            f"{checkout}:/github/workspace:ro",
            "-v",
            f"{commands}:/github/file_commands",
            "-e",
            "GITHUB_OUTPUT=/github/file_commands/output",
            "-e",
            "GITHUB_STEP_SUMMARY=/github/file_commands/summary",
            *docker_env_flags(given),
            image,
        ],
        env={**os.environ, **given},
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = dict(
        line.split("=", 1) for line in (commands / "output").read_text().splitlines() if line
    )
    log = result.stdout + result.stderr
    summary = (commands / "summary").read_text()
    # The only lines that name the secret are the runner's masking commands.
    for line in log.splitlines():
        if not line.startswith("::add-mask::"):
            assert not any(form in line for form in PASSWORD_FORMS), line
    assert not any(form in summary + str(outputs) for form in PASSWORD_FORMS)
    return ActionRun(result.returncode, log, outputs, summary)


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the Markdown tables, as cells."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows if not all(set(cell) <= {"-", " "} for cell in row)]


def test_the_action_runs_as_the_runner_runs_it(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    run = run_action(
        action_image,
        tmp_path,
        {
            "command": "upgrade",
            "target": "head",
            "database-url": database.url,
            "config": "alembic.ini",
            "wait-timeout": "30",
            "allow-downgrade": "false",
        },
        # What the runner sets in every step's environment.
        env={
            "GITHUB_ACTIONS": "true",
            "GITHUB_REPOSITORY": "acme/shop",
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
            "GITHUB_RUN_ID": "4242",
        },
    )

    assert run.status == 0, run.log
    assert database.revision() == HEAD
    outputs = run.outputs
    assert {key: outputs[key] for key in ("from-revision", "to-revision", "applied")} == {
        "from-revision": "base",
        "to-revision": HEAD,
        "applied": "4",
    }
    assert (outputs["command"], outputs["status"], outputs["exit-code"]) == ("upgrade", "ok", "0")
    assert float(outputs["seconds"]) > 0
    revisions = json.loads(outputs["revisions"])
    assert [step["direction"] for step in revisions] == ["upgrade"] * 4
    assert revisions[-1]["revision"] == HEAD
    assert all(step["seconds"] >= 0 and step["message"] for step in revisions)
    # The job summary: the run, then each revision with its message and duration.
    rows = table_rows(run.step_summary)
    assert run.step_summary.startswith("### migrator upgrade: ok")
    assert rows[1][:3] == ["base", HEAD, "4"]
    listed = rows[3 : 3 + len(revisions)]
    assert [row[1].strip("`") for row in listed] == [step["revision"] for step in revisions]
    assert [float(row[4]) for row in listed] == [step["seconds"] for step in revisions]
    # Last, the deploy ledger's newest row: the head's, by this workflow run.
    assert "Deploy ledger, newest row:" in run.step_summary
    ledger_row = dict(zip(rows[-2], rows[-1], strict=True))
    assert ledger_row["revision"] == HEAD
    assert (ledger_row["direction"], ledger_row["outcome"]) == ("upgrade", "applied")
    assert ledger_row["deploy"] == "github acme/shop@0123456789ab run 4242"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ledger_row["finished_at"])
    assert f"::add-mask::{PASSWORD}" in run.log


@pytest.mark.parametrize(
    "inputs", [{"command": "plan"}, {"command": "upgrade", "dry-run": "true"}], ids=str
)
def test_the_action_plans_without_changing_anything(
    action_image: str, database: Database, tmp_path: Path, inputs: dict[str, str]
) -> None:
    run = run_action(
        action_image, tmp_path, {**inputs, "target": "head", "database-url": database.url}
    )

    assert run.status == 0, run.log
    assert database.revision() is None  # nothing ran
    assert "alembic_version" not in database.tables()
    planned = json.loads(run.outputs["revisions"])
    assert (run.outputs["command"], run.outputs["planned"], run.outputs["applied"]) == (
        "plan",
        "4",
        "0",
    )
    # A plan's to-revision is where it would take the database; the database stays at base.
    assert (run.outputs["from-revision"], run.outputs["to-revision"]) == ("base", HEAD)
    assert planned[-1]["revision"] == HEAD
    assert "4 revision(s) would run" in run.step_summary.splitlines()[0]
    listed = re.findall(r"^\d+\. `(\w+)` (.*)$", run.step_summary, flags=re.MULTILINE)
    assert listed == [(step["revision"], step["message"]) for step in planned]
    assert f"### Safety report: upgrade from base to {HEAD} (head)" in run.step_summary


def test_the_action_plan_weighs_what_verify_recorded_in_the_checkout(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    """A workflow's two steps: `command: verify` records the effects in the checkout's
    manifest (here on the host: the test's checkout is mounted read-only), then a dry run
    against the database weighs them with its rows, in the job summary."""
    checkout = tmp_path / "checkout"
    for part in ("alembic", "persistence"):
        shutil.copytree(ROOT / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", checkout / "alembic.ini")
    env = {**database.env, "MIGRATOR_CONFIG": str(checkout / "alembic.ini")}
    assert run_migrator("verify", env=env).status == 0
    assert run_migrator("upgrade", "0d25ea6c8183", env=env).status == 0
    database.query(
        "INSERT INTO cars (id, make, model) "
        "SELECT g, 'Make', 'm' || g FROM generate_series(1, 20000) g"
    )
    database.query("ANALYZE cars")

    run = run_action(
        action_image,
        tmp_path / "plan",
        {"command": "upgrade", "dry-run": "true", "database-url": database.url},
        checkout=checkout,
    )

    assert run.status == 0, run.log
    assert f"### Safety report: upgrade from 0d25ea6c8183 to {HEAD} (head)" in run.step_summary
    rows = {(row[1], row[2], row[3]) for row in table_rows(run.step_summary) if len(row) == 9}
    assert ("`data-change`", "`public.cars`", "20,000 rows") in rows
    assert "not weighed" not in run.step_summary
    assert database.revision() == "0d25ea6c8183"


def test_the_action_plans_a_downgrade_and_reports_a_downgrade_with_json_logs(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    """Outputs come from the migrator's JSON summary file, not from its log: they are the
    same with JSON log lines (MIGRATOR_LOG_FORMAT in the step's env)."""
    url = {"database-url": database.url}
    json_logs = {"MIGRATOR_LOG_FORMAT": "json"}
    up = run_action(action_image, tmp_path / "up", {"command": "upgrade", **url}, json_logs)
    plan = run_action(
        action_image,
        tmp_path / "plan",
        {"command": "downgrade", "target": "base", "dry-run": "true", **url},
        json_logs,
    )
    down = run_action(
        action_image,
        tmp_path / "down",
        {"command": "downgrade", "target": "base", "allow-downgrade": "true", **url},
        json_logs,
    )

    assert up.status == 0 and up.outputs["to-revision"] == HEAD, up.log
    assert plan.status == 0, plan.log
    assert plan.outputs["planned"] == "4"
    assert json.loads(plan.outputs["revisions"])[0]["revision"] == HEAD
    assert "downgrade to `base`: 4 revision(s) would run" in plan.step_summary
    assert down.status == 0, down.log
    assert (down.outputs["from-revision"], down.outputs["to-revision"]) == (HEAD, "base")
    assert down.outputs["applied"] == "4"
    assert {step["direction"] for step in json.loads(down.outputs["revisions"])} == {"downgrade"}
    assert all(json.loads(line) for line in down.log.splitlines() if line.startswith("{"))
    assert database.revision() is None


def test_a_failed_run_fails_the_step_and_says_why(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    wrong = database.url.replace(quote(PASSWORD, safe=""), quote("not-" + PASSWORD, safe=""))

    run = run_action(action_image, tmp_path, {"database-url": wrong, "wait-timeout": "5"})

    assert run.status == 6, run.log  # the credentials were refused
    assert run.outputs["exit-code"] == "6"
    assert run.outputs["status"] not in ("", "ok")
    assert run.outputs["applied"] == "0"
    assert run.step_summary.startswith("### migrator upgrade: failed (exit 6)")
    assert "\n> " in run.step_summary  # the refusal's own line, quoted (no password: above)
    assert "Deploy ledger" not in run.step_summary  # nothing reached the database
    assert database.revision() is None


def test_a_usage_error_still_writes_outputs_and_a_summary(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    run = run_action(
        action_image,
        tmp_path,
        {"command": "upgrade", "target": "nosuch", "database-url": database.url},
    )

    assert run.status == 2, run.log
    assert run.outputs["exit-code"] == "2"
    assert "exit 2" in run.step_summary
    # The migrator's own error line, quoted: the summary says why without the log.
    assert "> target 'nosuch': Can't locate revision identified by 'nosuch'" in run.step_summary


def test_the_roundtrip_script_proves_upgrade_downgrade_upgrade(
    example_image: str, database: Database
) -> None:
    env = {
        **os.environ,
        **database.env,
        "MIGRATOR_IMAGE": example_image,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }

    result = subprocess.run(
        ["scripts/ci/roundtrip.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "schema objects identical after upgrade, downgrade base, upgrade" in result.stdout
    assert database.revision() == "c3f9b7d21a58"
    assert not any(form in result.stdout + result.stderr for form in PASSWORD_FORMS)


def test_the_roundtrip_script_catches_a_schema_that_does_not_come_back(
    example_image: str, database: Database, tmp_path: Path
) -> None:
    """A downgrade that leaves a table behind fails the script, naming the table."""
    image = "migrator-leaky:test"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {example_image}\nCOPY leak.py /project/alembic/versions/ffff00000001_leak.py\n"
    )
    (tmp_path / "leak.py").write_text(
        '"""leak"""\nfrom alembic import op\n\nrevision = "ffff00000001"\n'
        'down_revision = "c3f9b7d21a58"\n\n\ndef upgrade():\n'
        '    op.execute("CREATE TABLE leftover (id int)")\n\n\n'
        "def downgrade():\n    pass\n"
    )
    docker_build(image, tmp_path)
    env = {**os.environ, **database.env, "MIGRATOR_IMAGE": image}

    result = subprocess.run(
        ["scripts/ci/roundtrip.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 1
    assert "objects left at base" in result.stderr
    assert "table leftover: " in result.stderr  # the table left, named


PHASES = "examples/phases/alembic.ini"  # the example application's rename of cars.colour
PRE_HEAD = "5e1f0a2b7c39"  # pre: adds cars.color, copied from colour
POST_HEAD = "9a4d6c8e2f15"  # post: copies what the old release wrote meanwhile, drops colour


def car_columns(database: Database) -> set[str]:
    rows = database.query(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'cars'"
    )
    return {row[0] for row in rows}


def test_the_action_runs_the_pre_phase_then_the_post_phase(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    """Around a deploy: `phase: pre` expands (cars.color beside colour), a dry run of `phase:
    post` plans the contraction alone, `phase: post` contracts (colour gone). Each run's
    outputs and job summary say its phase."""
    given = {"command": "upgrade", "config": PHASES}  # target: head, the phase's own
    url = {"database-url": database.url}

    pre = run_action(action_image, tmp_path / "pre", {**given, **url, "phase": "pre"})

    assert pre.status == 0, pre.log
    assert {"colour", "color"} <= car_columns(database)
    assert database.revision() == PRE_HEAD
    assert (pre.outputs["phase"], pre.outputs["from-revision"]) == ("pre", "base")
    assert (pre.outputs["to-revision"], pre.outputs["applied"]) == (PRE_HEAD, "5")
    assert POST_HEAD not in pre.outputs["revisions"]
    assert pre.step_summary.startswith("### migrator upgrade, phase `pre`: ok")

    plan = run_action(
        action_image, tmp_path / "plan", {**given, **url, "phase": "post", "dry-run": "true"}
    )

    assert plan.status == 0, plan.log
    assert (plan.outputs["phase"], plan.outputs["planned"]) == ("post", "1")
    assert [step["revision"] for step in json.loads(plan.outputs["revisions"])] == [POST_HEAD]
    assert "to `head`, phase `post`: 1 revision(s) would run" in plan.step_summary
    assert database.revision() == PRE_HEAD  # a plan changes nothing

    post = run_action(action_image, tmp_path / "post", {**given, **url, "phase": "post"})

    assert post.status == 0, post.log
    assert "colour" not in car_columns(database) and "color" in car_columns(database)
    assert database.revision() == POST_HEAD
    assert (post.outputs["phase"], post.outputs["from-revision"]) == ("post", PRE_HEAD)
    assert (post.outputs["to-revision"], post.outputs["applied"]) == (POST_HEAD, "1")
    assert post.step_summary.startswith("### migrator upgrade, phase `post`: ok")


def test_the_post_phase_before_the_pre_phase_is_refused_and_the_summary_says_why(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    run = run_action(
        action_image,
        tmp_path,
        {"phase": "post", "config": PHASES, "database-url": database.url},
    )

    assert run.status == 2, run.log
    assert (run.outputs["exit-code"], run.outputs["phase"]) == ("2", "post")
    assert run.step_summary.startswith("### migrator upgrade, phase `post`: failed (exit 2)")
    # The migrator's own one line, quoted: the post revision and a pre revision it needs.
    (said,) = [line for line in run.step_summary.splitlines() if line.startswith("> ")]
    assert f"post revision {POST_HEAD} depends on pre revision " in said
    assert database.revision() is None  # nothing ran
    assert "cars" not in database.tables()


def test_a_phase_that_is_neither_pre_nor_post_is_the_migrators_own_usage_error(
    action_image: str, database: Database, tmp_path: Path
) -> None:
    """The action does not check the phase itself: the migrator says what is wrong."""
    run = run_action(
        action_image,
        tmp_path,
        {"phase": "during", "config": PHASES, "database-url": database.url},
    )

    assert run.status == 2, run.log
    (said,) = [line for line in run.step_summary.splitlines() if line.startswith("> ")]
    assert "MIGRATOR_PHASE" in said and "during" in said
    assert database.revision() is None


# The rollout, between the phases: the old release, still running, writes colour alone (it
# knows nothing of color); it runs only against the expanded schema.
ROLLOUT = f"""
import os
import sys

import sqlalchemy as sa

url = sa.URL.create(
    "postgresql+{HELPER_DRIVER}",
    username=os.environ["DB_USER"],
    password=os.environ["DB_PASSWORD"],
    host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]),
    database=os.environ["DB_NAME"],
)
with sa.create_engine(url).begin() as connection:
    columns = set(
        connection.execute(
            sa.text("SELECT column_name FROM information_schema.columns WHERE table_name = 'cars'")
        ).scalars()
    )
    if not {{"colour", "color"}} <= columns:
        sys.exit(f"deploy: not the expanded schema: {{sorted(columns)}}")
    connection.execute(
        sa.text("INSERT INTO cars (make, model, colour) VALUES ('Old', 'during-rollout', 'red')")
    )
print("deploy: the old release wrote colour during the rollout")
"""


def run_phases_script(
    database: Database, deploy: str, config: str = PHASES
) -> subprocess.CompletedProcess[str]:
    """scripts/ci/phases.sh as the reusable workflow runs it: `migrator` on PATH, the
    database and the project in the migrator's own variables, the deploy command in
    DEPLOY_COMMAND."""
    env = migrator_env(
        {
            **database.env,
            "MIGRATOR_CONFIG": str(ROOT / config),
            "DEPLOY_COMMAND": deploy,
            "PATH": f"{BIN}:{os.environ['PATH']}",
        }
    )
    return subprocess.run(
        ["scripts/ci/phases.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_phases_script_proves_pre_then_deploy_then_post(
    database: Database, tmp_path: Path
) -> None:
    (tmp_path / "rollout.py").write_text(ROLLOUT)

    result = run_phases_script(database, f"{BIN / 'python'} {tmp_path / 'rollout.py'}")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # In order: pre reached its heads, the deploy ran on the expanded schema, then post.
    said = [
        "phases: pre reached its heads; the post phase will run: " + POST_HEAD,
        "deploy: the old release wrote colour during the rollout",
        "phases: pre, deploy, post done; the database is at its heads",
    ]
    assert [result.stdout.index(line) for line in said] == sorted(
        result.stdout.index(line) for line in said
    )
    assert database.revision() == POST_HEAD
    assert "colour" not in car_columns(database)
    # What the old release wrote during the rollout, the post phase copied before the drop.
    assert database.query("SELECT color FROM cars WHERE model = 'during-rollout'") == [("red",)]
    assert not any(form in output for form in PASSWORD_FORMS)


def test_the_phases_script_never_runs_post_after_a_failed_deploy(database: Database) -> None:
    result = run_phases_script(database, "echo 'rollout: pods crash-looping' >&2; exit 3")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "phases: the deploy command failed (exit 3); the post phase did not run" in (
        result.stderr
    )
    assert "== post" not in result.stdout
    assert database.revision() == PRE_HEAD  # expanded, not contracted
    assert {"colour", "color"} <= car_columns(database)


def test_the_phases_script_passes_a_project_without_a_post_label(database: Database) -> None:
    """The example application without phases: everything is pre, post has nothing to do."""
    result = run_phases_script(database, "", config="alembic.ini")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "the post phase will run: nothing" in result.stdout
    assert "no deploy command given" in result.stdout
    assert database.revision() == HEAD
