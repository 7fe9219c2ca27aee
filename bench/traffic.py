"""A small, steady read/write load on one table, as an application keeps on a database.

Each client sends one query per fixed interval, alternating a primary-key read and a
one-row update. A query's latency counts from the moment it was due, not from when it was
sent, so a client stuck behind a lock queue records the whole stall for every query that
fell due meanwhile (no coordinated omission).
"""

from __future__ import annotations

import threading
import time

import psycopg2

QUERIES = (
    "SELECT qty FROM traffic WHERE id = %s",
    "UPDATE traffic SET qty = qty + 1 WHERE id = %s",
)


class Load:
    CLIENTS = 4
    PER_SECOND = 50  # each client's

    def __init__(self, url: str) -> None:
        self.url = url
        self.interval = 1.0 / self.PER_SECOND
        self.done = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (due, latency), perf_counter seconds
        self.lock = threading.Lock()
        self.clients = [
            threading.Thread(target=self._client, args=(number,), daemon=True)
            for number in range(self.CLIENTS)
        ]

    def __enter__(self) -> Load:
        for client in self.clients:
            client.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for client in self.clients:
            client.join()

    def _client(self, number: int) -> None:
        connection = psycopg2.connect(self.url, application_name="bench-load")
        connection.autocommit = True
        cursor = connection.cursor()
        start = time.perf_counter() + number * self.interval / len(self.clients)
        sent = 0
        while not self.done.is_set():
            due = start + sent * self.interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            cursor.execute(QUERIES[sent % 2], (1 + (sent * 7 + number) % 1000,))
            latency = time.perf_counter() - due
            with self.lock:
                self.samples.append((due, latency))
            sent += 1
        connection.close()

    def latencies(self, start: float, end: float) -> list[float]:
        """Latencies of the queries that fell due between `start` and `end`, sorted."""
        with self.lock:
            return sorted(latency for due, latency in self.samples if start <= due <= end)
