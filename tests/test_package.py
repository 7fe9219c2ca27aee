"""The Python package: its distribution name, metadata and typing marker in the wheel PyPI
gets, and the version written once (migrator/__init__.py) that the image's label, the
action's base image and the chart follow. The lowest allowed dependency versions and the
install beside an application's psycopg2 are proven by scripts/ci/package.sh (.ci/run)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import yaml
from conftest import ROOT

import migrator


def built_wheel(tmp_path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(tmp_path.glob("migrator_job-*.whl"))


def test_the_wheel_is_migrator_job_typed_with_the_driver_as_an_extra(tmp_path: Path) -> None:
    wheel = zipfile.ZipFile(built_wheel(tmp_path))
    names = wheel.namelist()
    metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    entry_points = wheel.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    requires = metadata.get_all("Requires-Dist") or []

    assert metadata["Name"] == "migrator-job"
    assert metadata["Version"] == migrator.__version__
    assert "migrator/py.typed" in names
    assert "migrator = migrator.__main__:main" in entry_points  # the command stays `migrator`
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
    assert any(url.startswith("Source, https://") for url in metadata.get_all("Project-URL") or [])
    # No driver unless asked for: psycopg2-binary would clash with an application's psycopg2.
    assert [r for r in requires if r.startswith("psycopg2")] == [
        'psycopg2-binary>=2.9.5; extra == "binary"',
        'psycopg2>=2.9.5; extra == "source"',
    ]
    assert "tenacity>=8.3" in requires  # 8.2 has no stop_before_delay


def test_the_version_is_written_once_and_the_rest_follow_it(migrator_image: str) -> None:
    version = migrator.__version__
    label = subprocess.run(
        [
            "docker",
            "inspect",
            "--format",
            '{{index .Config.Labels "org.opencontainers.image.version"}}',
            migrator_image,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    chart = yaml.safe_load((ROOT / "helm" / "migrator" / "Chart.yaml").read_text())

    assert label == version
    # The action builds the migrator from the pinned commit's sources: no version to name.
    assert "ARG MIGRATOR_IMAGE" not in (ROOT / "action.Dockerfile").read_text()
    assert chart["appVersion"] == version
    # Nowhere else: pyproject.toml reads it from the package.
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
