"""The job queue on disk: SQLite in the state folder, in WAL mode, every write committed before it is answered.

A job's row holds what to run (the library's `Job.to_dict()`, its seed already drawn), where it stands
(status, progress, windows, time left, the worker holding it, the error) and how it was asked for (the
idempotency key, the priority). Its events (the library's progress events, as the worker reported them,
and the job's own changes of status) are numbered rows beside it, which `GET /v1/videos/{id}/events`
replays. A service killed at any moment finds on its next start every job it had acknowledged; those that
were running go back to the queue in their place (`requeue_interrupted`).

Order: highest priority first, then first in, first out (`seq`).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
ID_PATTERN = re.compile(r"video_[0-9a-f]{24}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,      -- arrival order
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT,                           -- a digest of the submission sent with the key
    remixed_from TEXT,                          -- the job this one remixes or extends (OpenAI's remixed_from_video_id)
    priority INTEGER NOT NULL DEFAULT 0,
    gpus INTEGER NOT NULL DEFAULT 1,            -- workers (one GPU each) the job runs on at once
    status TEXT NOT NULL,
    job TEXT NOT NULL,                          -- Job.to_dict() as JSON: what a worker runs
    command TEXT NOT NULL,
    model TEXT NOT NULL,                        -- the registry alias it resolved to
    frames INTEGER, width INTEGER, height INTEGER, fps REAL, seed INTEGER, windows INTEGER,
    windows_done INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    eta_s REAL,
    error TEXT, error_param TEXT,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,        -- times a worker started it
    started_at INTEGER, completed_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0          -- DELETE asked: its files go once no worker holds it
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, priority, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,                          -- from 1, per job
    at REAL NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
);
"""


class QueueFull(Exception):
    """The queue holds its bound of waiting jobs."""


@dataclass(frozen=True)
class NewJob:
    """A submission checked by the library, ready to be recorded."""

    job: dict               # Job.to_dict(), its output inside the state folder and its seed drawn
    command: str
    model: str              # registry alias
    frames: int
    width: int
    height: int
    fps: float
    seed: int
    windows: int
    priority: int = 0
    gpus: int = 1


def new_id() -> str:
    """A random job id (`video_` and 24 hex digits): nothing to guess, nothing to count."""
    return "video_" + secrets.token_hex(12)


class Store:
    """The queue in `path` (created if missing). Safe to use from any thread of one process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write = threading.Lock()
        with self._write:
            db = self._db()
            db.executescript(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            if "gpus" not in columns:  # a queue made before jobs could ask for several GPUs
                db.execute("ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 1")
            for name in ("fingerprint", "remixed_from"):  # a queue made before these were recorded
                if name not in columns:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} TEXT")

    # ------------------------------------------------------------ connections

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the caller answers anyone
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    class _Transaction:
        def __init__(self, store: Store) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._write.acquire()
            self.db = self.store._db()
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, kind, *rest) -> None:
            try:
                self.db.execute("ROLLBACK" if kind else "COMMIT")
            finally:
                self.store._write.release()

    def _lock(self) -> _Transaction:
        return Store._Transaction(self)

    # ------------------------------------------------------------ submissions

    def add(self, new: NewJob, job_id: str, *, idempotency_key: str | None = None, fingerprint: str | None = None,
            max_queued: int | None = None, remixed_from: str | None = None) -> tuple[dict, bool]:
        """Record a job (committed when this returns); (its row, True). With an `idempotency_key` already
        recorded: (that job's row, False). A full queue raises QueueFull."""
        with self._lock() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    return dict(row), False
            if max_queued is not None:
                waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND deleted = 0").fetchone()[0]
                if waiting >= max_queued:
                    raise QueueFull(waiting)
            now = int(time.time())
            db.execute(
                "INSERT INTO jobs (id, created_at, idempotency_key, fingerprint, remixed_from, priority, gpus, status, "
                "job, command, model, frames, width, height, fps, seed, windows) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, now, idempotency_key, fingerprint, remixed_from, new.priority, new.gpus, json.dumps(new.job), new.command, new.model,
                 new.frames, new.width, new.height, new.fps, new.seed, new.windows))
            _event(db, job_id, "job", {"status": "queued"})
            return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> dict | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def by_key(self, key: str) -> dict | None:
        """The job recorded under an Idempotency-Key."""
        row = self._db().execute("SELECT * FROM jobs WHERE idempotency_key = ? AND deleted = 0", (key,)).fetchone()
        return dict(row) if row is not None else None

    def page(self, limit: int, after: str | None = None, order: str = "desc") -> tuple[list[dict], bool]:
        """Jobs newest first (`order` "asc": oldest first), `limit` of them, after the job `after` (a cursor;
        KeyError when there is no such job: answering the first page again would have a client paging round for
        ever); and whether more follow."""
        db = self._db()
        newest_first = order == "desc"
        bound = 1 << 62 if newest_first else -1
        if after is not None:
            cursor = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
            if cursor is None:
                raise KeyError(after)
            bound = cursor["seq"]
        beyond, direction = ("<", "DESC") if newest_first else (">", "ASC")
        rows = db.execute(f"SELECT * FROM jobs WHERE deleted = 0 AND seq {beyond} ? ORDER BY seq {direction} "
                          "LIMIT ?", (bound, limit + 1)).fetchall()
        return [dict(r) for r in rows[:limit]], len(rows) > limit

    def waiting(self) -> list[dict]:
        """The queued jobs in the order they will run."""
        rows = self._db().execute("SELECT * FROM jobs WHERE status = 'queued' AND deleted = 0 "
                                  "ORDER BY priority DESC, seq ASC").fetchall()
        return [dict(r) for r in rows]

    def position(self, row: dict) -> int | None:
        """How many queued jobs run before this one (0: next); None when it is not queued."""
        if row["status"] != "queued":
            return None
        return self._db().execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND deleted = 0 AND "
            "(priority > ? OR (priority = ? AND seq < ?))", (row["priority"], row["priority"], row["seq"])).fetchone()[0]

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT status, COUNT(*) AS n FROM jobs WHERE deleted = 0 GROUP BY status")
        return {status: 0 for status in STATUSES} | {r["status"]: r["n"] for r in rows}

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        rows = self._db().execute("SELECT n, at, type, data FROM events WHERE job_id = ? AND n > ? ORDER BY n",
                                  (job_id, after)).fetchall()
        return [{"n": r["n"], "at": r["at"], "type": r["type"], "data": json.loads(r["data"])} for r in rows]

    # ------------------------------------------------------------ what the scheduler writes

    def start(self, job_id: str, worker: str) -> bool:
        """A worker takes the job: in_progress. False if it is no longer queued (cancelled meanwhile)."""
        with self._lock() as db:
            done = db.execute("UPDATE jobs SET status = 'in_progress', worker = ?, attempts = attempts + 1, "
                              "started_at = COALESCE(started_at, ?), error = NULL, error_param = NULL "
                              "WHERE id = ? AND status = 'queued' AND deleted = 0",
                              (worker, int(time.time()), job_id)).rowcount
            if done:
                _event(db, job_id, "job", {"status": "in_progress", "worker": worker})
            return bool(done)

    def record(self, job_id: str, kind: str, data: dict, **progress) -> None:
        """One event of a running job, with the progress fields it changes."""
        with self._lock() as db:
            if progress:
                sets = ", ".join(f"{name} = ?" for name in progress)
                db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*progress.values(), job_id))
            _event(db, job_id, kind, data)

    def finish(self, job_id: str, status: str, *, error: str | None = None, param: str | None = None) -> None:
        with self._lock() as db:
            extra = ", progress = 100, eta_s = 0, windows_done = windows" if status == "completed" else ""
            db.execute(f"UPDATE jobs SET status = ?, error = ?, error_param = ?, completed_at = ?{extra} "
                       "WHERE id = ?", (status, error, param, int(time.time()), job_id))
            _event(db, job_id, "job", {"status": status, **({"error": error} if error else {})})

    def requeue(self, job_id: str, reason: str) -> None:
        """A running job back in the queue in its place (its worker was lost with its machine)."""
        with self._lock() as db:
            db.execute("UPDATE jobs SET status = 'queued', worker = NULL WHERE id = ? AND status = 'in_progress'",
                       (job_id,))
            _event(db, job_id, "job", {"status": "queued", "reason": reason})

    def cancel(self, job_id: str) -> dict | None:
        """Cancel: a queued job at once; a running one is marked, and its worker told by the scheduler."""
        with self._lock() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "queued":
                db.execute("UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ?",
                           (int(time.time()), job_id))
                _event(db, job_id, "job", {"status": "cancelled"})
            elif row["status"] == "in_progress":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def resume(self, job_id: str) -> dict | None:
        """A cancelled or failed job back in the queue in its place (`POST .../resume`): its worker continues it
        from the last window it kept."""
        with self._lock() as db:
            done = db.execute("UPDATE jobs SET status = 'queued', cancel_requested = 0, error = NULL, "
                              "error_param = NULL, completed_at = NULL, worker = NULL "
                              "WHERE id = ? AND deleted = 0 AND status IN ('cancelled', 'failed')", (job_id,)).rowcount
            if done:
                _event(db, job_id, "job", {"status": "queued", "reason": "resumed"})
        return self.get(job_id)

    def cancelling(self) -> list[dict]:
        rows = self._db().execute("SELECT * FROM jobs WHERE status = 'in_progress' AND cancel_requested = 1")
        return [dict(r) for r in rows]

    def mark_deleted(self, job_id: str) -> dict | None:
        """DELETE: gone from the API at once; its row and files go when no worker holds it (`deleted_idle`)."""
        with self._lock() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET deleted = 1, cancel_requested = 1, "
                       "status = CASE status WHEN 'queued' THEN 'cancelled' ELSE status END WHERE id = ?", (job_id,))
            return dict(row)

    def deleted_idle(self) -> list[str]:
        """Deleted jobs that no worker holds: their files can go."""
        rows = self._db().execute("SELECT id FROM jobs WHERE deleted = 1 AND status != 'in_progress'")
        return [r["id"] for r in rows]

    def remove(self, job_id: str) -> None:
        with self._lock() as db:
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def requeue_interrupted(self) -> list[str]:
        """At start: jobs a previous life of the service was running go back to the queue in their place (a
        cancel asked for meanwhile is honoured). Returns their ids."""
        with self._lock() as db:
            rows = db.execute("SELECT id, cancel_requested FROM jobs WHERE status = 'in_progress'").fetchall()
            for row in rows:
                status = "cancelled" if row["cancel_requested"] else "queued"
                db.execute("UPDATE jobs SET status = ?, worker = NULL WHERE id = ?", (status, row["id"]))
                _event(db, row["id"], "job", {"status": status, "reason": "the service restarted"})
            return [r["id"] for r in rows if not r["cancel_requested"]]


def _event(db: sqlite3.Connection, job_id: str, kind: str, data: dict) -> None:
    n = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
    db.execute("INSERT INTO events (job_id, n, at, type, data) VALUES (?, ?, ?, ?, ?)",
               (job_id, n, round(time.time(), 3), kind, json.dumps(data, default=str)))
