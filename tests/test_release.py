"""The release: a tag that does not match the code publishes nothing, the dry run runs every
step that needs no GitHub (scripts/ci/release-dry-run.sh), CHANGELOG.md gives each version's
notes, and the release workflow publishes with no more permission than each step needs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml
from conftest import PYTHON_IMAGE, ROOT

BIN = Path(sys.executable).parent
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
IMAGE = "migrator-release-test"  # the dry run's own tags, never the other tests' images
# Read from each action's own repository (fetched snapshot): the tag, and the commit it names.
PYPI_PUBLISH = "pypa/gh-action-pypi-publish@81e9d935c883d0b210363ab89cf05f3894778450"  # v1.8.14
COSIGN_INSTALLER = "sigstore/cosign-installer@6f9f17788090df1f26f669e9d70d6ae9567deba6"  # v4.1.2


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "ci" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VERSION: str = script("tag_version").code_version()


def dry_run(tag: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHON_IMAGE": PYTHON_IMAGE,
        "RELEASE_IMAGE": IMAGE,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["scripts/ci/release-dry-run.sh", tag],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_dry_run_builds_checks_and_runs_what_the_release_publishes() -> None:
    result = dry_run(f"v{VERSION}")

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"version: tag v{VERSION} is migrator {VERSION}" in out
    assert f"dist: migrator_job-{VERSION}.tar.gz" in out
    assert f"dist: migrator_job-{VERSION}-py3-none-any.whl" in out
    assert out.count("PASSED") == 2  # twine check --strict, both files
    assert f"notes: CHANGELOG.md [{VERSION}]" in out
    assert f"image: {IMAGE}:{VERSION} labelled {VERSION}; --version says: migrator {VERSION}" in out
    assert f"action: {IMAGE}:action-{VERSION} built from this checkout" in out
    assert out.rstrip().endswith(f"release dry run: v{VERSION} ok (nothing pushed or published)")


def test_a_tag_that_does_not_match_the_code_stops_first_in_one_line() -> None:
    result = dry_run("v99.0.0")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"release: tag v99.0.0 does not match migrator/__init__.py __version__ {VERSION} "
        f"(expected tag v{VERSION})"
    ]
    assert "== dist" not in result.stdout  # nothing was built


def test_the_notes_are_the_versions_section_and_nothing_else() -> None:
    section = script("changelog_section").section
    changelog = (
        "# Changelog\n\n## [Unreleased]\n\n- next\n\n## [1.10.0] - 2027-01-02\n\n### Added\n\n"
        "- ten\n\n## [1.1.0] - 2027-01-01\n\n- one\n\n[1.10.0]: https://example.org/1.10.0\n"
    )

    assert section(changelog, "1.10.0") == "### Added\n\n- ten"
    assert section(changelog, "1.1.0") == "- one"  # not 1.10.0's, and no link definitions
    assert section(changelog, "Unreleased") == "- next"
    assert section(changelog, "1.1") == ""


def test_the_changelog_has_this_versions_notes_and_states_what_the_api_is() -> None:
    notes = subprocess.run(
        [sys.executable, "scripts/ci/changelog_section.py", VERSION],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    missing = subprocess.run(
        [sys.executable, "scripts/ci/changelog_section.py", "99.0.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    changelog = (ROOT / "CHANGELOG.md").read_text()

    assert notes.returncode == 0 and notes.stdout.strip(), notes.stderr
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        "release: CHANGELOG.md has no section, or an empty one, for [99.0.0]"
    ]
    assert "## [Unreleased]" in changelog
    policy = changelog.split("## Compatibility policy")[1].split("\n## ")[0]
    for api in ("exit statuses", "variable names", "JSON fields", "manifest", "Breaking:"):
        assert api in policy, api


def test_the_release_publishes_only_after_the_tag_check_and_ci_with_least_privilege() -> None:
    workflow = yaml.safe_load(RELEASE.read_text())
    jobs = workflow["jobs"]
    text = RELEASE.read_text()

    # `on:` reads as True in YAML 1.1.
    assert workflow[True] == {"push": {"tags": ["v*"]}}
    assert "scripts/ci/tag_version.py" in jobs["version"]["steps"][-1]["run"]
    assert jobs["ci"]["uses"] == "$/.github/workflows/ci.yml" and jobs["ci"]["needs"] == "version"

    def upstream(name: str) -> set[str]:
        needs = jobs[name].get("needs", [])
        direct = {needs} if isinstance(needs, str) else set(needs)
        return direct.union(*(upstream(job) for job in direct))

    for publishing in ("pypi", "image", "sign", "github-release"):
        assert {"version", "ci"} <= upstream(publishing), publishing
    assert {"pypi", "image", "sign"} <= upstream("github-release")
    granted = {
        name: {scope for scope, access in job.get("permissions", {}).items() if access == "write"}
        for name, job in jobs.items()
    }
    assert granted == {
        "version": set(),
        "ci": set(),
        "pypi": {"id-token"},
        "image": {"packages"},
        "sign": {"id-token", "packages"},
        "github-release": {"contents"},
    }
    assert f"uses: {PYPI_PUBLISH} # v1.8.14" in text
    assert f"uses: {COSIGN_INSTALLER} # v4.1.2" in text
    sign = jobs["sign"]["steps"][-1]
    assert "cosign sign --yes" in sign["run"]
    assert sign["env"]["IMAGE"].endswith("@${{ needs.image.outputs.digest }}")  # by digest
    create = jobs["github-release"]["steps"][-1]["run"]
    assert "scripts/ci/changelog_section.py" in create and "gh release create" in create


def test_dependabot_watches_actions_python_and_images_weekly() -> None:
    path = ROOT / ".github" / "dependabot.yml"
    config = yaml.safe_load(path.read_text())
    schema = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.dependabot", str(path)],
        capture_output=True,
        text=True,
    )

    assert schema.returncode == 0, schema.stdout
    assert {update["package-ecosystem"] for update in config["updates"]} == {
        "github-actions",
        "pip",
        "docker",
    }
    assert {update["schedule"]["interval"] for update in config["updates"]} == {"weekly"}
