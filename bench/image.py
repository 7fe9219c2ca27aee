"""Figures for the container image: size, start time, and a no-op `upgrade head` in the
container beside the same on the host, against one throwaway PostgreSQL container.

Usage, from the repository root, with the image built and .venv set up:

    eval "$(scripts/pick-base-images.sh)"
    .venv/bin/python bench/image.py migrator:test "$MIGRATOR_TEST_PYTHON_IMAGE" \\
        "$MIGRATOR_TEST_POSTGRES_IMAGE" [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def size_mb(image: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6


def timed(command: list[str], runs: int, env: dict[str, str] | None = None) -> str:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
        seconds.append(time.perf_counter() - started)
    return (
        f"min {min(seconds):.3f}  median {statistics.median(seconds):.3f}  max {max(seconds):.3f}"
    )


def main() -> None:
    image, base, postgres_image = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    print(
        f"image {image}: {size_mb(image):.1f} MB; base {base}: {size_mb(base):.1f} MB; "
        f"delta {size_mb(image) - size_mb(base):.1f} MB"
    )
    print(
        f"docker run --rm {image} --version, {runs} runs (s): "
        + timed(["docker", "run", "--rm", image, "--version"], runs)
    )

    container = docker(
        "run",
        "-d",
        "--rm",
        "-p",
        "127.0.0.1::5432",
        "-e",
        f"POSTGRES_PASSWORD={PASSWORD}",
        postgres_image,
    ).strip()
    try:
        port = docker("port", container, "5432/tcp").split(":")[-1].strip()
        env = {
            **os.environ,
            "DB_HOST": "127.0.0.1",
            "DB_PORT": port,
            "DB_NAME": "postgres",
            "DB_USER": "postgres",
            "DB_PASSWORD": PASSWORD,
            "MIGRATOR_WAIT_TIMEOUT": "60",
            "MIGRATOR_CONFIG": str(ROOT / "alembic.ini"),
        }
        migrator = str(Path(sys.executable).parent / "migrator")
        subprocess.run([migrator, "upgrade", "head"], check=True, capture_output=True, env=env)
        in_container = [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            *[
                item
                for key in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")
                for item in ("-e", key)
            ],
            image,
        ]
        print(
            f"no-op upgrade head in the container, {runs} runs (s): "
            + timed(in_container, runs, env)
        )
        print(
            f"no-op upgrade head on the host,      {runs} runs (s): "
            + timed([migrator, "upgrade", "head"], runs, env)
        )
    finally:
        docker("stop", container)


if __name__ == "__main__":
    main()
