"""How soon `migrator wait` notices a database that becomes ready.

The migrator waits on a port where nothing listens yet; after a second a forwarder starts
listening there and relays to a running PostgreSQL. The latency is the time from that
moment to the migrator's first connection, which the forwarder sees arrive.

Usage, from the repository root, with DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD
naming a running PostgreSQL:

    .venv/bin/python bench/wait_latency.py [RUNS]
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def relay(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            end.close()


def one_run(upstream: tuple[str, int]) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(port),
        "MIGRATOR_WAIT_TIMEOUT": "30",
    }
    migrator = subprocess.Popen(
        [str(BIN / "migrator"), "wait"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # the migrator is retrying refused connections by now
    listener = socket.create_server(("127.0.0.1", port))
    ready = time.perf_counter()
    client, _ = listener.accept()
    noticed = time.perf_counter()
    server = socket.create_connection(upstream)
    for pair in ((client, server), (server, client)):
        threading.Thread(target=relay, args=pair, daemon=True).start()
    status = migrator.wait(timeout=30)
    listener.close()
    if status != 0:
        sys.exit(f"migrator wait exited {status}")
    return noticed - ready


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    upstream = (os.environ["DB_HOST"], int(os.environ.get("DB_PORT", "5432")))
    latencies = [one_run(upstream) for _ in range(runs)]
    print(
        f"database ready -> migrator connected, {runs} runs (ms): "
        f"min {min(latencies) * 1000:.0f}  median {statistics.median(latencies) * 1000:.0f}"
        f"  max {max(latencies) * 1000:.0f}"
    )


if __name__ == "__main__":
    main()
