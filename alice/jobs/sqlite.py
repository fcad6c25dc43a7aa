"""Job records in SQLite (`ALICE_DATA_DIR/jobs.sqlite3`), so the queue's history survives a restart:
the embedded store of a single server (the default). Records have the shape of `records`.

A record is written when a job is queued, starts, saves an image and finishes; step
progress lives in memory only (it changes many times a second and is worthless after
a crash).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created);
"""


class SqliteJobStore:
    """A small write-through table of job records (plain dicts)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the worker and request threads, serialised by a lock.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def save(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (id, created, state, record) VALUES (?, ?, ?, ?)",
                (record["id"], record["created"], record["state"], json.dumps(record)),
            )

    def load_all(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM jobs ORDER BY created, id").fetchall()
        return [json.loads(row[0]) for row in rows]

    def delete_oldest_finished(self, keep: int) -> None:
        """Forget finished jobs beyond the newest `keep`."""
        with self._lock:
            self._db.execute(
                "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND id NOT IN "
                "(SELECT id FROM jobs WHERE state NOT IN ('queued', 'running') ORDER BY created DESC LIMIT ?)",
                (keep,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
