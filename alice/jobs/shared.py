"""The job queue of replicas that share one PostgreSQL database (`ALICE_DATABASE_URL`).

Every replica accepts jobs into the one queue (the rows of `alice_jobs` in state queued), and
every replica's worker claims the job whose turn it is there (the oldest of the key served least
recently, by the jobs' start times in the records: the round of keys goes across replicas), with
the jobs behind it that share its pipeline call, by the same rule as one server
(`alice.jobs.batching`). This is the
queue's backend (`alice.jobs.backend`); the worker and each job's lifecycle are `JobQueue`'s.
What differs from one server (`alice.jobs.local`):

- A job's record is the database's: any replica lists, reads and cancels any job. A job
  submitted here but run elsewhere is followed by polling (`POLL_S`), so a waiting request or
  an SSE stream sees its steps and its end.
- The running replica writes its jobs' steps and renews their lease every `POLL_S` (the
  heartbeat). A cancel asked on any replica reaches it at once (PostgreSQL's LISTEN/NOTIFY, on
  a thread of its own) and the job stops at its next step; the heartbeat's answer carries the
  same flag, should the listening connection have been down.
- A replica that dies stops renewing: once the lease (`ALICE_JOB_LEASE_S`) runs out, any
  replica marks its jobs failed (`interrupted`), not retried: a job that killed one replica
  (a driver crash, the OOM killer) would take down the next one too. Queued jobs are rows
  that no replica holds, and wait for the others.
- Loading or unloading a model is this replica's chore: it waits in this replica's own line
  and runs before its worker claims the next job.
- When the database does not answer, requests that need it get QueueUnavailable (a 503 with
  Retry-After), said once per outage in the log; the jobs running here run on, their waiting
  requests get their answer, and their records are written once the database is back. A
  replica that stops (SIGTERM) hands jobs it claimed but did not start back to the queue.
- Nothing here blocks the event loop: the HTTP routes call in from worker threads, and a
  cancel from the loop itself (a client that hung up) is handed to a thread of its own.
  `/health` and `/metrics` read the copy in memory that the sync thread keeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable

import psycopg

from alice.jobs.backend import QueueSide
from alice.jobs.batching import companions
from alice.jobs.job import CANCELLED, DEADLINE, Chore, Job, JobState, OwnerQueueFull, QueueFull
from alice.jobs.postgres import PostgresJobStore
from alice.metrics import prometheus_metrics, shared_queue_depth

logger = logging.getLogger("alice.jobs")

POLL_S = 0.25
"""How often a replica looks for work, writes progress and renews leases, and reads the jobs
it follows for other replicas."""

INTERRUPTED = "the server running this job stopped answering (its lease ran out)"


class QueueUnavailable(QueueFull):
    """The shared queue's database cannot be reached: no room for anything until it is back."""

    code = "database_unavailable"

    def __init__(self, retry_after_s: int = 10) -> None:
        Exception.__init__(self, "the job database is unreachable; try again later")
        self.retry_after_s = retry_after_s


class SharedJobs:
    """A JobBackend (see `alice.jobs.backend`) over the queue in PostgreSQL; `replica` names this
    server in the records, `lease_s` is how long its running jobs outlive its last heartbeat."""

    def __init__(self, store: PostgresJobStore, *, replica: str, lease_s: float) -> None:
        self._shared = store
        self._replica = replica
        self._lease_s = lease_s
        self._poll_s = min(POLL_S, lease_s / 4)
        self._chores: list[Chore] = []  # this replica's own line, run before it claims the next job
        self._jobs: dict[str, Job] = {}  # the jobs someone follows here (the database keeps the rest)
        self._mine: dict[str, Job] = {}  # claimed here and not finished (saving included)
        self._unsaved: dict[str, Job] = {}  # jobs run here whose last record the database missed
        self._cancel_later: set[str] = set()  # cancels the database missed
        self._waiting_everywhere = 0
        self._outage_since: float | None = None  # time.monotonic() when the database stopped answering
        self._cancels = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="alice-job-cancel")
        self._stop_syncing = threading.Event()
        self._sync_thread = threading.Thread(target=self._sync, name="alice-job-sync", daemon=True)
        self._cancel_listener = threading.Thread(
            target=store.follow_cancels, args=(self._cancel_heard, self._stop_syncing, self._poll_s),
            name="alice-job-cancels", daemon=True,
        )

    @property
    def replica(self) -> str:
        return self._replica

    def attach(self, queue: QueueSide) -> None:
        self._queue = queue
        self._lock = queue.lock

    # -- the worker ----------------------------------------------------------------
    def start(self) -> None:
        self._sync_once()
        self._sync_thread.start()
        self._cancel_listener.start()

    def stop(self) -> None:
        self._cancels.shutdown(wait=True)
        self._stop_syncing.set()
        for thread in (self._sync_thread, self._cancel_listener):
            if thread.is_alive():
                thread.join(5)
        try:
            self._sync_once()  # the last records and cancels
            self._db(self._shared.leave, self._replica)
        except QueueUnavailable:  # the database is gone; this replica's row ages out
            logger.warning("could not sign this replica off the job database: it is unreachable")
        except Exception:  # stopping goes on
            logger.exception("the last sync with the job database failed")
        self._shared.close()

    # -- the database's availability ----------------------------------------------------
    def _db(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A call into the store; QueueUnavailable (a 503 for a request) if the database does
        not answer. The log says once when it stops answering and once when it is back."""
        try:
            result = call(*args, **kwargs)
        except psycopg.OperationalError as exc:
            with self._lock:
                first, self._outage_since = self._outage_since is None, self._outage_since or time.monotonic()
            if first:
                logger.warning("the job database is unreachable (%s); job requests answer 503 until it is back",
                               _describe(exc))
            raise QueueUnavailable() from None
        if self._outage_since is not None:
            with self._lock:
                since, self._outage_since = self._outage_since, None
            if since is not None:
                logger.info("the job database answers again (it was unreachable for %.0f s)", time.monotonic() - since)
        return result

    def next_work(self) -> Chore | list[Job] | None:
        failing = False
        while True:
            with self._lock:
                if not self._queue.accepting:
                    return None
                if self._chores:
                    chore = self._chores.pop(0)
                    self._queue.mark_running(chore)
                    return chore
            try:
                batch = self._claim()
                failing = False
            except QueueUnavailable:  # logged once per outage; the next poll tries again
                batch = None
            except Exception:  # say so once, not four times a second
                if not failing:
                    logger.exception("claiming a job from the database failed")
                failing, batch = True, None
            if batch:
                with self._lock:
                    if self._queue.accepting:
                        self._queue.mark_running(batch)
                        return batch
                self._hand_back(batch)  # SIGTERM came while claiming: another replica runs them
                return None
            with self._lock:
                if self._queue.accepting and not self._chores:
                    self._lock.wait(self._poll_s)

    def _claim(self) -> list[Job] | None:
        """Claim the oldest queued job and its companions, marked running under this replica's
        name; the ones past their deadline are failed. Returns the rest (None: none waited)."""
        claimed: list[Job] = []

        def choose(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            claimed[:] = self._choose([Job.from_record(record) for record in records])
            return [job.record() for job in claimed]

        if not self._db(self._shared.claim, self._replica, self._lease_s, self._room_behind, choose):
            return None
        batch, expired = [], []
        with self._lock:
            for fresh in claimed:
                job = self._jobs.get(fresh.id)
                if job is None:
                    self._jobs[fresh.id] = job = fresh
                else:  # submitted here, watched by its request
                    job.update_from(fresh.record())
                self._mine[job.id] = job
                (expired if time.time() > job.deadline else batch).append(job)
                job._notify()
        for job in expired:
            self._queue.end(job, JobState.FAILED, DEADLINE, f"the job waited past its deadline ({DEADLINE})")
        return batch

    def _hand_back(self, batch: list[Job]) -> None:
        """Give jobs claimed here but not started back to the queue, in their place."""
        ids = [job.id for job in batch]
        try:
            self._db(self._shared.release, ids, self._replica)
        except QueueUnavailable:  # their lease runs out, and another replica fails them
            logger.warning("could not hand %d claimed jobs back to the queue: the database is unreachable", len(ids))
            return
        with self._lock:
            for job in batch:
                self._mine.pop(job.id, None)
                job.state, job.started, job.replica = JobState.QUEUED, None, None
                job._notify()
        logger.info("stopping: handed %d claimed jobs back to the queue", len(ids))

    def _room_behind(self, head: dict[str, Any]) -> int:
        """How many queued jobs could join this head's batch at most (each draws an image or more)."""
        job = Job.from_record(head)
        return max(0, self._queue.max_images(job) - job.spec.num_images)

    def _choose(self, candidates: list[Job]) -> list[Job]:
        """The head and the candidates right behind it that join its batch (`alice.jobs.batching`),
        marked running here. Jobs past their deadline are taken too, to be failed."""
        head, now = candidates[0], time.time()
        taken = [head]
        if now <= head.deadline:
            found = companions(head, candidates[1:], self._queue.max_images(head), now)
            taken += candidates[1 : 1 + found.taken]  # joined and expired, in queue order
        for job in taken:
            job.state, job.started, job.replica = JobState.RUNNING, now, self._replica
        return taken

    def add_chore(self, chore: Chore) -> None:
        self._chores.append(chore)

    def persist(self, job: Job) -> None:
        if job.replica != self._replica or job.id not in self._mine:
            return  # only the replica running a job writes its record
        try:
            self._save(job)
        except QueueUnavailable:  # the job runs on; the sync thread writes its record once it can
            with self._lock:
                self._unsaved[job.id] = job

    def _save(self, job: Job) -> None:
        written = self._db(self._shared.update, job.record(), self._replica)
        with self._lock:
            self._unsaved.pop(job.id, None)
        if not written:
            logger.warning("job %s was failed by another replica (this one missed its lease); stopping it", job.id)
            job.cancel_requested = True  # no GPU time for a job whose record says it ended

    def ended(self, job: Job) -> None:
        with self._lock:
            self._mine.pop(job.id, None)
            self._forget_old()

    def _forget_old(self) -> None:
        """Keep only the jobs someone follows here (under the lock); the database keeps the rest."""
        for job in [j for j in self._jobs.values() if j.state.finished and not j._watchers]:
            if job.id not in self._mine:
                del self._jobs[job.id]

    # -- the sync thread ---------------------------------------------------------------
    def _sync(self) -> None:
        failing = False
        while not self._stop_syncing.wait(self._poll_s):
            try:
                self._sync_once()
                failing = False
            except QueueUnavailable:  # logged once per outage; the next poll tries again
                pass
            except Exception:  # say so once, not four times a second
                if not failing:
                    logger.exception("job sync with the database failed")
                failing = True

    def _sync_once(self) -> None:
        """Heartbeat, progress and cancels of this replica's jobs; news of the jobs it follows;
        the end of jobs whose replica died."""
        with self._lock:
            unsaved, cancels = list(self._unsaved.values()), list(self._cancel_later)
        for job in unsaved:
            self._save(job)
        for job_id in cancels:
            self._cancel(job_id)
            with self._lock:
                self._cancel_later.discard(job_id)
        with self._lock:
            mine = list(self._mine.values())
            followed = [job.id for job in self._jobs.values() if not job.state.finished and job.id not in self._mine]
            busy = self._queue.busy
        cancelled = self._db(
            self._shared.heartbeat,
            self._replica, busy, [(job.id, job.step, job.total_steps) for job in mine], self._lease_s
        )
        if cancelled:
            with self._lock:
                for job in mine:
                    if job.id in cancelled:
                        job.cancel_requested = True
        if followed:
            for record in self._db(self._shared.records, followed):
                self._follow(record)
        for record, images in self._db(self._shared.expire_leases, "interrupted", INTERRUPTED):
            with self._lock:
                stalled = self._mine.get(record["id"])
            if stalled:  # this replica's own, its heartbeats late: it stops, and ends it itself
                stalled.cancel_requested = True
                logger.warning("job %s: this replica missed its lease; another may have failed it", stalled.id)
                continue
            job = self._follow(record)
            self._queue.discard_images(images)
            logger.warning("job %s failed: replica %s stopped renewing its lease", job.id, job.replica)
            self._queue.on_finish(job)
        self._waiting_everywhere = self._db(self._shared.waiting)
        self._publish_gauges()
        if self._db(self._shared.due, "trim-job-records", 60):
            self._db(self._shared.delete_oldest_finished, self._queue.keep_finished)
        with self._lock:
            self._forget_old()

    def _publish_gauges(self) -> None:
        """This replica's own gauges (its line, its running batch), which Prometheus may sum over
        replicas, and the shared queue's depth, the same on every replica (read it with max())."""
        metrics = prometheus_metrics()
        metrics.queue_depth.set(self.waiting_here)
        metrics.running.set(1 if self._queue.running else 0)
        shared_queue_depth().set(self._waiting_everywhere)

    def _follow(self, record: dict[str, Any]) -> Job:
        """This replica's copy of a job run elsewhere, brought up to date (its watchers told)."""
        with self._lock:
            job = self._jobs.get(record["id"])
            if job is None:
                job = Job.from_record(record)
                self._jobs[job.id] = job
            elif job.id not in self._mine and job.update_from(record):
                job._notify()
            job.cancel_requested = job.cancel_requested or bool(record.get("cancel_requested"))
            return job

    # -- the clients' side ------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            if not self._queue.accepting:
                raise QueueFull(self._waiting_everywhere, self._queue.retry_after_s())
        full = self._db(self._shared.insert, job.record(), self._queue.max_waiting, replica_timeout_s=self._lease_s,
                        max_per_owner=self._queue.max_per_owner)
        if full and full[0] < 0:  # its owner's share is full
            raise OwnerQueueFull(job.owner or "", -full[0], self._queue.retry_after_s())
        if full:
            waiting, average, live = full
            raise QueueFull(waiting, max(1, min(600, round((average or 10.0) * max(1, waiting) / max(1, live)))))
        with self._lock:
            self._jobs[job.id] = job
            self._waiting_everywhere += 1
            self._lock.notify_all()  # this replica's worker may be idle: look now

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            if job := self._mine.get(job_id):
                job.cancel_requested = True  # its next step stops it
            known = job or self._jobs.get(job_id)
        if _on_event_loop():
            # A request whose client hung up cancels its job from the event loop
            # (alice.http.handling.wait_for): the statement runs on a thread of its own.
            if known:
                known.cancel_requested = True
            try:
                self._cancels.submit(self._cancel_in_background, job_id)
            except RuntimeError:  # stopping: the last sync sends it
                with self._lock:
                    self._cancel_later.add(job_id)
            return known
        return self._cancel(job_id)

    def _cancel_heard(self, job_id: str) -> None:
        """A client asked, on some replica, to cancel a running job: if it runs here, its next
        step stops it."""
        with self._lock:
            if job := self._mine.get(job_id):
                job.cancel_requested = True
                logger.debug("job %s: cancel heard at step %d", job_id, job.step)

    def _cancel_in_background(self, job_id: str) -> None:
        try:
            self._cancel(job_id)
        except QueueUnavailable:  # the sync thread tries again once the database is back
            with self._lock:
                self._cancel_later.add(job_id)
        except Exception:  # a future would keep it silently
            logger.exception("cancelling job %s failed", job_id)

    def _cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._mine.get(job_id)
        found = self._db(self._shared.cancel, job_id, CANCELLED, "the job was cancelled")
        if found is None:
            return job
        record, ended = found
        job = self._follow(record)
        if ended:
            logger.info("job %s cancelled while queued", job.id)
            self._queue.on_finish(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            if job := self._mine.get(job_id) or self._unsaved.get(job_id):
                return job
        record = self._db(self._shared.get, job_id)
        return self._follow(record) if record else None

    def list(self, owner: str | None = None) -> list[Job]:
        with self._lock:
            mine = dict(self._mine)
        records = self._db(self._shared.recent, self._queue.keep_finished + self._queue.max_waiting + 1, owner)
        return [mine.get(record["id"]) or Job.from_record(record) for record in records]

    @property
    def waiting(self) -> int:
        """Jobs waiting in the shared queue (as of the last sync), this replica's chores included."""
        return self._waiting_everywhere + len(self._chores)

    @property
    def waiting_here(self) -> int:
        """Only this replica's chores wait for its own worker; the jobs wait for any replica's."""
        return len(self._chores)

    def is_my_turn(self, task: str, interval_s: float) -> bool:
        try:
            return self._db(self._shared.due, task, interval_s)
        except QueueUnavailable:  # another turn comes once the database is back
            return False


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """An error's kind and first line (psycopg's messages name the host, never the password)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
