"""Every example in README.md and docs/ is kept true: run here as written (against a real
PostgreSQL, the built image, or the chart rendered by Helm's engine), or named below with
the test or CI step that runs it, or with the reason it cannot run. A new example that is
none of these fails `test_every_example_is_accounted_for`.

Where an example is changed to run here, the change is named: the image tag the session
built (`migrator:test`, or the tag in MIGRATOR_TEST_IMAGE_TAG, for `migrator`), and
`--network` to reach the test server.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from conftest import ROOT, Database, docker_build, run_migrator

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHART = ROOT / "helm" / "migrator"
HEAD = "c3f9b7d21a58"


@dataclass(frozen=True)
class Example:
    page: str  # README.md, docs/safety.md
    line: int
    language: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        """The page and the example's first line: what the tables below name it by."""
        return self.page, self.text.splitlines()[0] if self.text else ""


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        index = 0
        while index < len(lines):
            opening = re.match(r"^```(\S*)", lines[index])
            if opening:
                end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
                name = str(page.relative_to(ROOT))
                text = "\n".join(lines[index + 1 : end])
                found.append(Example(name, index + 1, opening.group(1), text))
                index = end
            index += 1
    return found


def example(page: str, first_line: str) -> Example:
    (found,) = [e for e in examples() if e.key == (page, first_line)]
    return found


PHASES_PIPELINE = "# Expand before the rollout, contract after it: one job per phase, in order."

# Run by this file: (page, first line) -> the test here that runs it.
RUN_HERE = {
    ("README.md", "docker build -t migrator .     # the migrator image, from this checkout"): (
        "test_the_readme_image_path"
    ),
    ("README.md", "FROM migrator"): "test_the_readme_image_path",
    ("README.md", "docker run --rm -e DATABASE_URL myapp-migrations upgrade head"): (
        "test_the_readme_image_path"
    ),
    (
        "README.md",
        "migrator verify     # every downgrade undoes its upgrade, models match; writes "
        "migrator-manifest.json",
    ): "test_the_readme_image_path",
    ("README.md", "helm install shop-migrations helm/migrator --timeout 16m \\"): (
        "test_helm_install_examples_render"
    ),
    ("docs/kubernetes.md", "helm install shop-migrations helm/migrator --timeout 16m \\"): (
        "test_helm_install_examples_render"
    ),
    (
        "docs/fleets.md",
        "database: {host: db.internal, name: shop, user: shop, existingSecret: {name: shop-db}}",
    ): "test_the_fleet_values_render",
    ("README.md", "- uses: migrator/migrator@<commit-sha> # v0.1.0"): (
        "test_action_steps_use_only_the_actions_inputs"
    ),
    ("docs/github-actions.md", "- uses: migrator/migrator@<commit-sha> # v0.1.0"): (
        "test_action_steps_use_only_the_actions_inputs"
    ),
    ("docs/github-actions.md", PHASES_PIPELINE): (
        "test_the_phases_pipeline_migrates_pre_then_deploys_then_migrates_post"
    ),
    (
        "README.md",
        "pip install '.[psycopg]'      # psycopg 3: postgresql:// on SQLAlchemy 2.1; '.[binary]' "
        "for psycopg2",
    ): "test_the_readme_pip_path (the install itself: scripts/ci/package.sh)",
    ("docs/your-project.md", "FROM migrator"): "test_the_readme_image_path (the same lines)",
}
# Run elsewhere: (page, first line) -> the test or CI step that runs what it shows.
RUN_ELSEWHERE = {
    (
        "docs/phases.md",
        'alembic revision -m "add cars.color, copied from colour" --head c3f9b7d21a58 '
        "--branch-label pre --rev-id 5e1f0a2b7c39",
    ): "tests/test_phases.py::test_the_documented_alembic_commands_make_a_phased_project",
    (
        "README.md",
        "scripts/demo.sh     # the main job: a throwaway PostgreSQL, `migrator upgrade "
        "head`, `migrator current`",
    ): "scripts/ci/fresh-machine.sh (.ci/run), tests/test_demo.py",
    (
        "docs/development.md",
        "scripts/demo.sh     # the main job: a throwaway PostgreSQL, "
        "`migrator upgrade head`, `migrator current`",
    ): "scripts/ci/fresh-machine.sh (.ci/run)",
    (
        "docs/development.md",
        "pip install '.[binary]'   # or: pip install -r requirements.lock "
        "&& pip install --no-deps .",
    ): "scripts/ci/package.sh (.ci/run)",
    ("docs/fleets.md", "# a database on the configured server (DATABASE_URL or DB_*)"): (
        "tests/test_fleet.py (the targets file's every form)"
    ),
    ("docs/fleets.md", "docker run --rm --network host --read-only --tmpfs /tmp \\"): (
        "tests/test_image.py::test_fleet_on_a_read_only_root_needs_a_writable_tmp_and_says_so"
    ),
    ("docs/github-actions.md", "services:"): (
        ".github/workflows/roundtrip.yml (actionlint, zizmor and GitHub's schema in "
        "tests/test_github_actions.py)"
    ),
    ("docs/github-actions.md", "jobs:"): (
        "tests/test_github_actions.py::"
        "test_the_reusable_roundtrip_installs_the_locked_migrator_at_its_own_commit"
    ),
    (
        "docs/performance.md",
        "scripts/bench.sh --output bench/RESULTS.md    # parts 1 to 9: about 25 minutes on 2 CPUs",
    ): "tests/test_bench.py (every part, tiny chains)",
    (
        "docs/safety.md",
        "# In CI, before the image build (a throwaway PostgreSQL; needs CREATEDB there):",
    ): "tests/test_safety_build.py",
    (
        "docs/safety.md",
        'migrator_safety = {"allow": ["table-rewrite:accounts"]}  # at the top '
        "level of the revision file",
    ): ("tests/test_safety.py::test_the_revision_opts_out_of_exactly_its_rule_and_table"),
    (
        "docs/verify.md",
        "migrator verify          # on a scratch database next to the configured one",
    ): "tests/test_verify.py",
    ("docs/your-project.md", "from migrator.alembic_env import run_migrations"): (
        "alembic/env.py is exactly this; every test of the example project runs it"
    ),
    (
        "docs/your-project.md",
        "pip install 'migrator-job[psycopg]'  # once published; until "
        "then, from a checkout: pip install '.[psycopg]'",
    ): "scripts/ci/package.sh (each extra)",
    (
        "docs/your-project.md",
        "docker build -t migrator .                            # the "
        "released image: the tool, no migrations",
    ): "tests/conftest.py (both targets, every run)",
    (
        "docs/your-project.md",
        "scripts/build-base-images.sh            # local/debian:bookworm, "
        "local/python:3.11-slim, local/postgres:15",
    ): ("scripts/test.sh and scripts/demo.sh where no registry answers (tests/test_demo.py)"),
}
# Not commands: what a command prints, or what a user types in their own project.
NOT_RUN = {
    ("docs/safety.md", "upgrade from 0d25ea6c8183 to c3f9b7d21a58 (head): 3 revision(s)"): (
        "output of plan --safety; its findings are asserted in "
        "tests/test_safety.py::test_the_example_tree_reads_as_a_reviewer_expects"
    ),
    ("docs/safety.md", "safety: 4 error, 1 warning, 2 info"): (
        "output of plan --safety on the probe; asserted in tests/test_safety.py"
    ),
    ("README.md", "$ migrator history --ledger"): (
        "output of history --ledger; its rows and format are asserted in "
        "tests/test_ledger.py::test_history_ledger_prints_every_row_in_order"
    ),
    ("docs/ledger.md", "$ migrator history"): (
        "output of history and history --ledger; asserted in tests/test_ledger.py and "
        "tests/test_commands.py::test_history_marks_applied_revisions"
    ),
    (
        "docs/ledger.md",
        "ERROR   revision 0d25ea6c8183 was changed after it was applied (2026-12-06 02:16:34 "
        "UTC by helm shop revision 41 image ghcr.io/acme/shop-migrations:2026.12.01): its "
        "checksum was d4a7802a9683, the file's is 2be1ef94388f; nothing ran. Review it, then "
        "`migrator accept 0d25ea6c8183`, or set MIGRATOR_ON_CHANGED_REVISION=warn",
    ): (
        "the error line; asserted in tests/test_ledger.py::"
        "test_an_applied_revision_whose_code_changed_stops_the_run_and_a_comment_does_not"
    ),
    (
        "docs/ledger.md",
        '{"revision": "c3f9b7d21a58", "direction": "upgrade", "outcome": "applied",',
    ): (
        "a summary file's ledger row; its keys are asserted in tests/test_ledger.py::"
        "test_the_summary_file_carries_the_ledgers_newest_row_on_every_path"
    ),
    ("README.md", "$ migrator plan upgrade heads"): (
        "the expand/contract deploy of examples/phases, as docs/phases.md shows it whole; "
        "asserted in tests/test_phases.py (the plan's lines, the refusal, each phase), run "
        "under the chart by tests/test_helm_chart.py and by the action in "
        "tests/test_github_actions.py"
    ),
    ("docs/phases.md", "$ migrator plan upgrade heads"): (
        "output of plan, then of the post phase refused and the pre phase; asserted in "
        "tests/test_phases.py (test_plan_shows_each_pending_revisions_phase, "
        "test_the_post_phase_before_the_pre_phase_is_refused_naming_both, "
        "test_pre_then_post_renames_a_column_while_the_old_release_keeps_writing)"
    ),
    ("docs/phases.md", "$ migrator upgrade --phase post"): (
        "output of the post phase and the renamed column's rows; asserted in "
        "tests/test_phases.py::test_pre_then_post_renames_a_column_while_the_old_release_keeps_writing"
    ),
    ("docs/phases.md", 'alembic revision -m "add orders.placed_at" --head pre@head'): (
        "the pattern of a developer's next change: plain Alembic, untouched by the migrator"
    ),
    ("docs/development.md", 'alembic revision --autogenerate -m "add mileage"'): (
        "a developer's own change to the models: plain Alembic, untouched by the migrator"
    ),
}


def test_every_example_is_accounted_for() -> None:
    known = RUN_HERE.keys() | RUN_ELSEWHERE.keys() | NOT_RUN.keys()
    found = {e.key for e in examples()}
    assert sorted(found - known) == []  # a new example: run it, or say who does, or why not
    assert sorted(known - found) == []  # an example changed: this file names it anew
    assert all(reason.strip() for reason in [*RUN_ELSEWHERE.values(), *NOT_RUN.values()])


# A measured figure: seconds to the millisecond, milliseconds, or a ratio ("4.8x").
MEASURED = re.compile(r"\b\d+\.\d{3} s\b|\b\d+(?:\.\d+)? ?ms\b|\b\d+(?:\.\d+)?x\b")
BENCH_FILE = re.compile(r"bench/[\w.-]+\.(?:py|md)")
# Figures that look measured and are not.
NOT_MEASURED = {("docs/configuration.md", "2147483647 ms"): "PostgreSQL's own limit"}


def test_every_measured_figure_cites_the_bench_file_it_comes_from() -> None:
    """Each paragraph, list item or table with a measured figure names a bench file that
    exists, in itself or in the paragraph that introduces it."""
    uncited = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
        blocks = re.split(r"\n\s*\n", prose)
        for before, block in zip(["", *blocks], blocks, strict=False):
            figures = [f for f in MEASURED.findall(block) if (name, f) not in NOT_MEASURED]
            cited = BENCH_FILE.findall(block) or BENCH_FILE.findall(before)
            if figures and not cited:
                uncited.append((name, figures[0], block[:80]))
            assert all((ROOT / path).is_file() for path in cited), (name, cited)
    assert uncited == []


def test_the_development_page_names_every_step_of_ci_run_in_order() -> None:
    """docs/development.md's `.ci/run` item names each script `.ci/run` runs, in its order."""
    script = "\n".join(line.split("#")[0] for line in (ROOT / ".ci/run").read_text().splitlines())
    steps = re.findall(r"(?:scripts|bench)/[\w/.-]+\.(?:sh|py)", script)
    page = (ROOT / "docs/development.md").read_text()
    item = re.search(r"^- `\.ci/run`:.*?(?=^- )", page, flags=re.MULTILINE | re.DOTALL)
    assert item is not None
    named = re.findall(r"(?:scripts|bench)/[\w/.-]+\.(?:sh|py)", item.group(0))
    assert [step for step in named if step in steps] == steps


def commands(text: str) -> list[str]:
    """The example's commands: comments dropped, continued lines joined."""
    joined = text.replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]


def test_the_readme_image_path(
    migrator_image: str, database: Database, tmp_path: Path, server: Any
) -> None:
    """A team's project (the example application, its package called myapp), CI's
    `migrator verify`, the README's Dockerfile, and `docker run` against the database."""
    project = tmp_path / "project"
    (project / "alembic").mkdir(parents=True)
    shutil.copytree(ROOT / "alembic", project / "alembic", dirs_exist_ok=True)
    shutil.copytree(ROOT / "persistence", project / "myapp")
    shutil.copy(ROOT / "alembic.ini", project / "alembic.ini")
    for module in [project / "alembic" / "env.py", *(project / "myapp").glob("*.py")]:
        module.write_text(module.read_text().replace("persistence", "myapp"))
    verify = commands(
        example(
            "README.md",
            "migrator verify     # every downgrade undoes its "
            "upgrade, models match; writes migrator-manifest.json",
        ).text
    )
    assert verify == ["migrator verify"]
    verified = run_migrator(
        "verify", env={**database.env, "MIGRATOR_CONFIG": str(project / "alembic.ini")}
    )
    assert verified.status == 0, verified.output
    assert (project / "migrator-manifest.json").exists()

    build = commands(
        example(
            "README.md", "docker build -t migrator .     # the migrator image, from this checkout"
        ).text
    )
    assert build == ["docker build -t migrator ."]  # built by the session: migrator_image
    dockerfile = example("README.md", "FROM migrator").text
    assert dockerfile == example("docs/your-project.md", "FROM migrator").text
    (project / "Dockerfile").write_text(
        dockerfile.replace("FROM migrator", f"FROM {migrator_image}", 1)
    )
    docker_build("myapp-migrations:test", project)

    (run,) = commands(
        example("README.md", "docker run --rm -e DATABASE_URL myapp-migrations upgrade head").text
    )
    arguments = shlex.split(run)
    assert arguments[:5] == ["docker", "run", "--rm", "-e", "DATABASE_URL"]
    url = database.url.replace(
        "@" + server.host + ":" + str(server.port), f"@127.0.0.1:{server.port}"
    )
    ran = subprocess.run(
        [
            *arguments[:3],
            "--network",
            "host",
            *arguments[3:5],
            "myapp-migrations:test",
            *arguments[6:],
        ],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert ran.returncode == 0, ran.stderr
    assert database.revision() == HEAD
    # The effects CI recorded travelled with the image: weighed, nothing measured here.
    assert "safety: 4 of 4 pending revision(s) weighed with the live table sizes" in ran.stderr
    assert "not weighed" not in ran.stderr


def test_the_readme_pip_path(database: Database, tmp_path: Path) -> None:
    """The commands after the install (the install itself, each extra in a fresh venv, is
    scripts/ci/package.sh's), on the example project."""
    lines = commands(
        example(
            "README.md",
            "pip install '.[psycopg]'      # psycopg 3: postgresql:// on SQLAlchemy 2.1; "
            "'.[binary]' for psycopg2",
        ).text
    )
    assert lines[0] == "pip install '.[psycopg]'"
    assert lines[1].startswith("export DATABASE_URL=")
    env = {"DATABASE_URL": database.url, "MIGRATOR_CONFIG": str(ROOT / "alembic.ini")}
    results = [run_migrator(*shlex.split(line)[1:], env=env) for line in lines[2:]]

    assert [r.status for r in results] == [0, 0], [r.output for r in results]
    assert f"upgrade from base to {HEAD} (head): 4 revision(s)" in results[0].stdout
    assert database.revision() == HEAD


def helm_values(arguments: list[str]) -> dict[str, Any]:
    """The values `--set a.b=c` flags give, as Helm reads them (numbers stay strings here)."""
    values: dict[str, Any] = {}
    for flag, setting in itertools.pairwise(arguments):
        if flag != "--set":
            continue
        path, _, value = setting.partition("=")
        *parents, leaf = path.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return values


@pytest.mark.parametrize("page", ["README.md", "docs/kubernetes.md"])
def test_helm_install_examples_render(page: str) -> None:
    (line,) = commands(
        example(page, "helm install shop-migrations helm/migrator --timeout 16m \\").text
    )
    arguments = shlex.split(line)
    assert arguments[:4] == ["helm", "install", "shop-migrations", "helm/migrator"]
    rendered = helm_python.Chart.load(str(ROOT / arguments[3])).render(
        helm_values(arguments), name=arguments[2], namespace="prod", is_install=True
    )
    documents = [
        d
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]
    (job,) = [d for d in documents if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/shop-migrations:1.4.0"


def test_the_fleet_values_render() -> None:
    text = example(
        "docs/fleets.md",
        "database: {host: db.internal, name: shop, user: shop, existingSecret: {name: shop-db}}",
    ).text
    rendered = helm_python.Chart.load(str(CHART)).render(
        yaml.safe_load(text), name="shop", namespace="prod", is_install=True
    )
    kinds = [
        d["kind"]
        for path, t in rendered.items()
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(t)
        if d
    ]
    assert kinds.count("Job") == 2  # the canary's Job, then the fleet's Indexed Job


def test_the_phases_pipeline_migrates_pre_then_deploys_then_migrates_post(
    tmp_path: Path,
) -> None:
    """The jobs run in a chain (pre, the rollout, post), each migrator step with the action's
    own inputs only, and the whole lints clean as a workflow."""
    text = example("docs/github-actions.md", PHASES_PIPELINE).text
    jobs = yaml.safe_load(text)["jobs"]
    inputs = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]
    required = {name for name, spec in inputs.items() if spec.get("required")}

    assert list(jobs) == ["migrate-pre", "deploy", "migrate-post"]
    assert (jobs["deploy"]["needs"], jobs["migrate-post"]["needs"]) == ("migrate-pre", "deploy")
    phases = []
    for job in jobs.values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("migrator/migrator@"):
                assert required <= set(step["with"]) <= set(inputs)
                phases.append(step["with"]["phase"])
    assert phases == ["pre", "post"]
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "deploy.yml").write_text(
        "name: deploy\non: push\npermissions:\n  contents: read\n" + text
    )
    linted = subprocess.run(
        [str(Path(sys.executable).parent / "actionlint"), ".github/workflows/deploy.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("page", ["README.md", "docs/github-actions.md"])
def test_action_steps_use_only_the_actions_inputs(page: str) -> None:
    step = yaml.safe_load(example(page, "- uses: migrator/migrator@<commit-sha> # v0.1.0").text)[0]
    inputs = yaml.safe_load((ROOT / "action.yml").read_text())["inputs"]
    assert step["uses"].startswith("migrator/migrator@")
    assert set(step["with"]) <= set(inputs)
    assert {name for name, spec in inputs.items() if spec.get("required")} <= set(step["with"])
