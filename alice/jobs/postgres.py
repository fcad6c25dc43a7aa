"""Job records and the one queue that replicas share, in PostgreSQL (`ALICE_DATABASE_URL`).

Plain SQL rather than a queue library: ALICE's worker takes the head job *and* the queued
jobs right behind it that can share its pipeline call (see `alice.jobs`), follows each job's
steps, cancels one at its next step and fails one past its deadline; queue libraries
(procrastinate, pgqueuer) hand out one task at a time to a function and own the task's
lifecycle, which would leave batching, progress and cancel to be rebuilt around them.
`SELECT ... FOR UPDATE SKIP LOCKED` is the whole of what they would add here.

Who does what:
- any replica inserts a job (`insert`, with the global queue bound), reads and cancels any job;
- a replica's worker claims the oldest queued job and its companions (`claim`), marking them
  running under its name with a lease; while they run it renews the lease and writes their
  step (`heartbeat`, a few times a second);
- a cancel of a running job is also a NOTIFY on `CANCEL_CHANNEL`, which each replica LISTENs
  to on a connection of its own (`follow_cancels`), so the running replica hears it at once and
  stops at its next step, however short a step is; the heartbeat's answer carries the same
  flags, for a replica whose listening connection was down when the cancel came;
- any replica fails the jobs whose lease ran out (`expire_leases`): their replica died.

Times of the lease are the database's clock, so replicas' clocks may disagree.

Connections come from a small pool (psycopg_pool): the worker, the sync thread and request
threads never queue behind one another's statement, a connection that died with the server
(a restart, a failover) is checked and replaced before use, and every way the database can
fail to answer in time ends as `psycopg.OperationalError` within seconds (the pool's wait,
its bounded line of waiters, the statement timeout), which callers turn into a 503.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

logger = logging.getLogger("alice.jobs.postgres")
# The pool warns of every failed connection attempt, several a second while the server is down;
# alice.jobs.shared says once per outage that the database is gone, and once that it is back.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

# pg_advisory_xact_lock keys: one for schema changes, one that makes "count, then insert" atomic.
SCHEMA_LOCK = 0x414C494345_01
SUBMIT_LOCK = 0x414C494345_02

NOW = "extract(epoch from clock_timestamp())"

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_S = 10
"""Every statement here takes milliseconds; one that waits this long on a lock or a sick server
is cancelled, so no thread waits on the database for longer."""
POOL_SIZE = 8  # the worker, the sync thread, and concurrent requests
POOL_WAIT_S = 3.0
"""How long a caller waits for a free connection (or for the server to come back) before it
gets a PoolTimeout."""
CANCEL_CHANNEL = "alice_job_cancel"  # payload: the job's id
MAX_CALLERS = POOL_SIZE * 3
"""Beyond this many callers in the store at once, the next fails at once: a slow database holds
at most this many request threads, and the server's other routes keep the rest."""

MIGRATIONS: list[str] = [
    # 1: jobs (the queue is the rows in state 'queued'), replicas' heartbeats, once-per-cluster timers
    """
    CREATE TABLE alice_jobs (
        seq bigserial UNIQUE,
        id text PRIMARY KEY,
        created double precision NOT NULL,
        state text NOT NULL,
        replica text,
        lease_until double precision,
        cancel_requested boolean NOT NULL DEFAULT false,
        record jsonb NOT NULL
    );
    CREATE INDEX alice_jobs_queued ON alice_jobs (created, seq) WHERE state = 'queued';
    CREATE INDEX alice_jobs_running ON alice_jobs (lease_until) WHERE state = 'running';
    CREATE INDEX alice_jobs_by_created ON alice_jobs (created);
    CREATE TABLE alice_replicas (
        name text PRIMARY KEY,
        seen double precision NOT NULL,
        busy boolean NOT NULL DEFAULT false
    );
    CREATE TABLE alice_timers (
        name text PRIMARY KEY,
        last double precision NOT NULL
    );
    """,
]

# A record as read back: the stored record plus the cancel flag, which lives in its own column
# so that the running replica's writes of the record never undo a cancel.
RECORD = "record || jsonb_build_object('cancel_requested', cancel_requested)"


def migrate(db: psycopg.Connection) -> int:
    """Bring the schema up to date; safe when several replicas start at once (one advisory
    lock serialises them, and each applies only what is missing). Returns the version."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS alice_schema (version integer NOT NULL)")
        row = db.execute("SELECT version FROM alice_schema").fetchone()
        version = row[0] if row else 0
        if not row:
            db.execute("INSERT INTO alice_schema (version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the job database has schema version {version}, newer than this ALICE knows ({len(MIGRATIONS)}); "
                "upgrade this replica"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute(migration)
            db.execute("UPDATE alice_schema SET version = %s", (number,))
            logger.info("job database schema upgraded to version %d", number)
        return len(MIGRATIONS)


class PostgresJobStore:
    """The job tables, through a pool of connections (see the module's notes)."""

    def __init__(self, url: str) -> None:
        # Not the pool's max_waiting: a waiter that timed out stays in the pool's line, and once
        # the line is full while the server is down, the pool never tries to connect again
        # (psycopg_pool 3.3.3; seen in tests/unit/test_shared_jobs.py's outage test).
        self._callers = threading.BoundedSemaphore(MAX_CALLERS)
        self._url = url
        # statement_timeout bounds every statement; idle_in_transaction_session_timeout frees
        # the row locks of a replica that froze inside a claim.
        options = f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000} -c idle_in_transaction_session_timeout=60000"
        self._pool = ConnectionPool(
            url, min_size=1, max_size=POOL_SIZE, timeout=POOL_WAIT_S,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "options": options},
            check=ConnectionPool.check_connection,
            # Give up a failed connection attempt at once: the next caller that finds no
            # connection starts another, so the pool is back as soon as the server is.
            reconnect_timeout=0, name="alice-jobs", open=False,
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
            with self._connection() as db:
                migrate(db)
        except BaseException:
            self._pool.close()
            raise

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if not self._callers.acquire(blocking=False):
            raise psycopg.OperationalError(f"{MAX_CALLERS} statements already wait for the job database")
        try:
            with self._pool.connection() as db:
                yield db
        finally:
            self._callers.release()

    # -- submitting ----------------------------------------------------------------
    def insert(self, record: dict[str, Any], max_waiting: int, replica_timeout_s: float,
               max_per_owner: int = 0) -> tuple[int, float | None, int] | None:
        """Queue a job unless the queue is full: `max_waiting` jobs waiting beyond one per idle
        replica, or `max_per_owner` of its owner's (0: no such bound). None when queued; else
        (jobs waiting, recent seconds per job, live replicas), the first negative (minus its
        owner's jobs waiting) when the owner's share is full."""
        with self._connection() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SUBMIT_LOCK,))
            if max_per_owner and record.get("owner") is not None:
                owned = db.execute("SELECT count(*) FROM alice_jobs WHERE state = 'queued' AND record->>'owner' = %s",
                                   (record["owner"],)).fetchone()[0]
                if owned >= max_per_owner:
                    return -owned, None, 0
            waiting = db.execute("SELECT count(*) FROM alice_jobs WHERE state = 'queued'").fetchone()[0]
            live, idle = db.execute(
                f"SELECT count(*), count(*) FILTER (WHERE NOT busy) FROM alice_replicas WHERE seen > {NOW} - %s",
                (replica_timeout_s,),
            ).fetchone()
            if waiting >= max_waiting + idle:
                average = db.execute(
                    "SELECT avg((record->>'generated')::float - (record->>'started')::float) FROM "
                    "(SELECT record FROM alice_jobs WHERE state = 'succeeded' ORDER BY created DESC LIMIT 20) recent"
                ).fetchone()[0]
                return waiting, average, live
            db.execute(
                "INSERT INTO alice_jobs (id, created, state, record) VALUES (%s, %s, %s, %s)",
                (record["id"], record["created"], record["state"], Jsonb(record)),
            )
            return None

    # -- the worker's side -----------------------------------------------------------
    def claim(
        self,
        replica: str,
        lease_s: float,
        room: Callable[[dict[str, Any]], int],
        choose: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """Take the queued job whose turn it is (the oldest of the key whose jobs started least
        recently: `alice.jobs.batching.whose_turn` across replicas) that no other replica is
        taking, and those behind it (any key's, in queue order) that `choose` picks to join it;
        `room(head)` says how many could join at most. `choose` returns the records to store
        (marked running). Returns them; [] when none waits."""
        with self._connection() as db, db.transaction():
            head = db.execute(
                "WITH served AS (SELECT record->>'owner' AS owner, max((record->>'started')::float) AS last "
                "FROM alice_jobs WHERE record->>'started' IS NOT NULL GROUP BY 1) "
                "SELECT job.seq, job.created, job.record FROM alice_jobs job "
                "LEFT JOIN served ON served.owner IS NOT DISTINCT FROM job.record->>'owner' "
                "WHERE job.state = 'queued' ORDER BY served.last NULLS FIRST, job.created, job.seq "
                "LIMIT 1 FOR UPDATE OF job SKIP LOCKED"
            ).fetchone()
            if head is None:
                return []
            seq, created, head_record = head
            followers: list[dict[str, Any]] = []
            if (more := room(head_record)) > 0:
                followers = [row[0] for row in db.execute(
                    "SELECT record FROM alice_jobs WHERE state = 'queued' AND seq <> %s "
                    "ORDER BY created, seq LIMIT %s FOR UPDATE SKIP LOCKED",
                    (seq, more),
                )]
            chosen = choose([head_record, *followers])
            for record in chosen:
                db.execute(
                    f"UPDATE alice_jobs SET state = %s, replica = %s, lease_until = {NOW} + %s, record = %s "
                    "WHERE id = %s",
                    (record["state"], replica, lease_s, Jsonb(record), record["id"]),
                )
            return chosen

    def update(self, record: dict[str, Any], replica: str) -> bool:
        """The running replica writes its job's record; False when the job is no longer its own
        (its lease ran out and another replica failed it)."""
        with self._connection() as db:
            return db.execute(
                "UPDATE alice_jobs SET state = %s, record = %s WHERE id = %s AND replica = %s AND state = 'running'",
                (record["state"], Jsonb(record), record["id"], replica),
            ).rowcount == 1

    def heartbeat(self, replica: str, busy: bool, running: list[tuple[str, int, int]], lease_s: float) -> set[str]:
        """Say this replica lives; renew the lease of its running jobs (id, step, total steps)
        and write their progress. Returns the ids of those a client asked to cancel."""
        cancelled: set[str] = set()
        with self._connection() as db:
            db.execute(
                f"INSERT INTO alice_replicas (name, seen, busy) VALUES (%s, {NOW}, %s) "
                f"ON CONFLICT (name) DO UPDATE SET seen = {NOW}, busy = EXCLUDED.busy",
                (replica, busy),
            )
            for job_id, step, total in running:
                row = db.execute(
                    f"UPDATE alice_jobs SET lease_until = {NOW} + %s, "
                    "record = record || jsonb_build_object('step', %s::int, 'total_steps', %s::int) "
                    "WHERE id = %s AND replica = %s AND state = 'running' RETURNING cancel_requested",
                    (lease_s, step, total, job_id, replica),
                ).fetchone()
                if row and row[0]:
                    cancelled.add(job_id)
        return cancelled

    def expire_leases(self, error_code: str, error: str) -> list[tuple[dict[str, Any], list[str]]]:
        """Fail the running jobs whose replica stopped renewing their lease. Returns each one's
        record and the images it had saved (which no one will hand out)."""
        with self._connection() as db:
            rows = db.execute(
                f"""
                WITH expired AS (
                    SELECT id, record->'images' AS images FROM alice_jobs
                    WHERE state = 'running' AND lease_until < {NOW} FOR UPDATE SKIP LOCKED
                )
                UPDATE alice_jobs AS job SET state = 'failed', record = job.record || jsonb_build_object(
                    'state', 'failed', 'finished', {NOW}, 'error_code', %s::text, 'error', %s::text,
                    'images', '[]'::jsonb, 'replica', job.replica)
                FROM expired WHERE job.id = expired.id
                RETURNING job.{RECORD}, expired.images
                """,
                (error_code, error),
            ).fetchall()
        return [(record, list(images or ())) for record, images in rows]

    def release(self, ids: list[str], replica: str) -> None:
        """Give jobs this replica claimed but did not start back to the queue, where they were
        (the queue's order is by creation)."""
        with self._connection() as db:
            db.execute(
                "UPDATE alice_jobs SET state = 'queued', replica = NULL, lease_until = NULL, record = record || "
                "jsonb_build_object('state', 'queued', 'started', NULL, 'replica', NULL) "
                "WHERE id = ANY(%s) AND replica = %s AND state = 'running'",
                (ids, replica),
            )

    def leave(self, replica: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM alice_replicas WHERE name = %s", (replica,))

    # -- anyone's side ---------------------------------------------------------------
    def cancel(self, job_id: str, code: str, error: str) -> tuple[dict[str, Any], bool] | None:
        """Ask for a job's cancel: a queued one ends now, a running one at its next step (its
        replica reads the flag). Returns (its record, whether it ended now); None if unknown."""
        with self._connection() as db:
            row = db.execute(
                f"""
                UPDATE alice_jobs SET cancel_requested = true,
                    state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                    record = CASE WHEN state = 'queued' THEN record || jsonb_build_object(
                        'state', 'cancelled', 'finished', {NOW}, 'error_code', %s::text, 'error', %s::text)
                        ELSE record END
                WHERE id = %s AND state IN ('queued', 'running')
                RETURNING {RECORD}, state = 'cancelled'
                """,
                (code, error, job_id),
            ).fetchone()
            if row:
                if not row[1]:  # running: tell its replica now, not at its next heartbeat
                    db.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, job_id))
                return row[0], row[1]
            row = db.execute(f"SELECT {RECORD} FROM alice_jobs WHERE id = %s", (job_id,)).fetchone()
        return (row[0], False) if row else None

    def follow_cancels(self, on_cancel: Callable[[str], None], stop: threading.Event, poll_s: float) -> None:
        """Call `on_cancel(job_id)` for every running job a client asks to cancel, anywhere, as
        it is asked, until `stop` is set (checked every `poll_s`). Runs on a thread of its own,
        with a connection of its own (a LISTENing connection cannot go back to the pool). While
        the database is away it tries again every second; cancels asked meanwhile reach the
        running replica through its heartbeat."""
        while not stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as db:
                    db.execute(f"LISTEN {CANCEL_CHANNEL}")
                    while not stop.is_set():
                        for note in db.notifies(timeout=poll_s):
                            on_cancel(note.payload)
            except psycopg.OperationalError:
                stop.wait(1.0)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._connection() as db:
            row = db.execute(f"SELECT {RECORD} FROM alice_jobs WHERE id = %s", (job_id,)).fetchone()
        return row[0] if row else None

    def records(self, ids: list[str]) -> list[dict[str, Any]]:
        with self._connection() as db:
            return [row[0] for row in db.execute(f"SELECT {RECORD} FROM alice_jobs WHERE id = ANY(%s)", (ids,))]

    def recent(self, limit: int, owner: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` records (`owner`'s only, if named), newest first."""
        with self._connection() as db:
            return [row[0] for row in db.execute(
                f"SELECT {RECORD} FROM alice_jobs WHERE %s::text IS NULL OR record->>'owner' = %s "
                "ORDER BY created DESC, seq DESC LIMIT %s", (owner, owner, limit)
            )]

    def waiting(self) -> int:
        with self._connection() as db:
            return db.execute("SELECT count(*) FROM alice_jobs WHERE state = 'queued'").fetchone()[0]

    def delete_oldest_finished(self, keep: int) -> None:
        """Forget finished jobs beyond the newest `keep`."""
        with self._connection() as db:
            db.execute(
                "DELETE FROM alice_jobs WHERE state NOT IN ('queued', 'running') AND id NOT IN "
                "(SELECT id FROM alice_jobs WHERE state NOT IN ('queued', 'running') ORDER BY created DESC LIMIT %s)",
                (keep,),
            )

    def due(self, timer: str, interval_s: float) -> bool:
        """True for exactly one caller per `interval_s` across all replicas (retention sweeps)."""
        with self._connection() as db:
            return db.execute(
                f"INSERT INTO alice_timers (name, last) VALUES (%s, {NOW}) "
                f"ON CONFLICT (name) DO UPDATE SET last = {NOW} WHERE alice_timers.last < {NOW} - %s RETURNING name",
                (timer, interval_s),
            ).fetchone() is not None

    def close(self) -> None:
        self._pool.close()
