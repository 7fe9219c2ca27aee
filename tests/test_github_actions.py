"""GitHub Actions: the workflows lint clean, the container action runs as the runner runs it,
and the round-trip script CI calls proves a real upgrade/downgrade/upgrade."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import PASSWORD, PASSWORD_FORMS, ROOT, Database, docker_build, docker_env_flags

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
            assert "timeout-minutes" in job, f"{path}: job {name} has no timeout"
            for step in job.get("steps", []):
                if "uses" in step:
                    ref = step["uses"].split("@")[1]
                    assert re.fullmatch(r"[0-9a-f]{40}", ref), step["uses"]
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert set(ci["jobs"]) == {"lint", "test", "roundtrip", "kind", "release"}
    assert "concurrency" in ci
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    # The jobs' real work is the repository's own scripts, which .ci/run calls too.
    for script in (
        "scripts/ci/lint.sh",
        "scripts/test.sh",
        "scripts/ci/roundtrip.sh",
        "scripts/ci/kind.sh",
    ):
        assert script in runs, script


def test_the_action_runs_as_the_runner_runs_it(
    migrator_image: str, database: Database, tmp_path: Path
) -> None:
    docker_build("migrator-action:test", ROOT / "action", f"MIGRATOR_IMAGE={migrator_image}")
    commands = tmp_path / "file_commands"
    commands.mkdir()
    (commands / "output").touch()
    # The runner passes inputs as INPUT_<NAME>, upper-cased, dashes kept.
    inputs = {
        "INPUT_COMMAND": "upgrade",
        "INPUT_TARGET": "head",
        "INPUT_DATABASE-URL": database.url,
        "INPUT_CONFIG": "alembic.ini",
        "INPUT_WAIT-TIMEOUT": "30",
        "INPUT_ALLOW-DOWNGRADE": "false",
    }

    result = subprocess.run(
        # As the runner does: the checkout as the working directory, GITHUB_OUTPUT a file.
        [
            "docker",
            "run",
            "--rm",
            "--workdir",
            "/github/workspace",
            "-v",
            f"{ROOT}:/github/workspace:ro",
            "-v",
            f"{commands}:/github/file_commands",
            "-e",
            "GITHUB_OUTPUT=/github/file_commands/output",
            *docker_env_flags(inputs),
            "migrator-action:test",
        ],
        env={**os.environ, **inputs},
        capture_output=True,
        text=True,
        timeout=120,
    )

    outputs = dict(line.split("=", 1) for line in (commands / "output").read_text().split())
    assert result.returncode == 0, result.stderr
    assert outputs == {"from-revision": "base", "to-revision": "c3f9b7d21a58", "applied": "4"}
    assert database.revision() == "c3f9b7d21a58"
    # The only lines that name the secret are the runner's masking commands.
    for line in (result.stdout + result.stderr).splitlines():
        if not line.startswith("::add-mask::"):
            assert not any(form in line for form in PASSWORD_FORMS), line
    assert f"::add-mask::{PASSWORD}" in result.stdout


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
    assert "table leftover: exists" in result.stderr
