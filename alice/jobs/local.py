"""The queue of one server (the default): jobs and chores wait in one FIFO in memory, the jobs'
records are in SQLite (`alice.jobs.sqlite`), so the history and the queued jobs survive a restart.

Chores share the FIFO with the jobs, so a model load never jumps ahead of the jobs queued
before it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from typing import Any

from alice.jobs.backend import QueueSide
from alice.jobs.batching import companions, whose_turn
from alice.jobs.job import CANCELLED, DEADLINE, Chore, Job, JobState
from alice.jobs.sqlite import SqliteJobStore

logger = logging.getLogger("alice.jobs")


class LocalJobs:
    """A JobBackend (see `alice.jobs.backend`): the FIFO in memory, with records in `store`
    (none kept without one)."""

    def __init__(self, store: SqliteJobStore | None = None) -> None:
        self._store = store
        self._waiting: collections.deque[Job | Chore] = collections.deque()  # one FIFO for both
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._served: dict[str | None, int] = {}  # each key's last batch, counted (the round of keys)
        self._batches = itertools.count()

    def attach(self, queue: QueueSide) -> None:
        self._queue = queue
        self._lock = queue.lock
        if self._store:
            self._restore(self._store.load_all())

    def _restore(self, records: list[dict[str, Any]]) -> None:
        """Pick up where the last process stopped: queued jobs wait again (in order);
        a job that was running died with the process, and its partial images go."""
        queue = self._queue
        for record in records[-queue.keep_finished - queue.max_waiting - 1 :]:
            job = Job.from_record(record)
            self._jobs[job.id] = job
            if job.state is JobState.QUEUED:
                self._waiting.append(job)
            elif job.state is JobState.RUNNING:
                queue.discard_images(job.images)
                job.images = []
                job.state, job.finished = JobState.FAILED, time.time()
                job.error_code, job.error = "interrupted", "the server stopped while this job ran"
                self.persist(job)
                logger.warning("job %s was running when the server stopped; marked failed", job.id)
        if self._waiting:
            logger.info("%d queued jobs restored from the last run", len(self._waiting))

    def start(self) -> None:
        pass  # no thread of its own

    def stop(self) -> None:
        pass  # the store stays open: a stopped queue still answers reads

    # -- the worker's side -----------------------------------------------------------
    def next_work(self) -> Chore | list[Job] | None:
        with self._lock:
            while True:
                while self._queue.accepting and not self._waiting:
                    self._lock.wait()
                if not self._queue.accepting:
                    return None
                if isinstance(self._waiting[0], Chore):
                    chore = self._waiting.popleft()
                    self._queue.mark_running(chore)
                    return chore
                # A chore is a barrier: the keys take turns among the jobs queued before it.
                jobs: list[Job] = list(itertools.takewhile(lambda work: isinstance(work, Job), self._waiting))
                head = whose_turn(jobs, self._served)
                self._waiting.remove(head)
                if self._expired(head):
                    continue
                found = companions(head, [job for job in jobs if job is not head], self._queue.max_images(head),
                                   time.time())
                for job in found.joined + found.expired:
                    self._waiting.remove(job)
                for job in found.expired:
                    self._expired(job)
                batch = [head, *found.joined]
                turn = next(self._batches)
                for job in batch:
                    self._served[job.owner] = turn
                self._queue.mark_running(batch)
                return batch

    def _expired(self, job: Job) -> bool:
        """End a job that waited past its deadline (under the lock)."""
        if time.time() <= job.deadline:
            return False
        self._queue.end(job, JobState.FAILED, DEADLINE, f"the job waited past its deadline ({DEADLINE})")
        return True

    def add_chore(self, chore: Chore) -> None:
        self._waiting.append(chore)

    def persist(self, job: Job) -> None:
        if self._store:
            self._store.save(job.record())

    def ended(self, job: Job) -> None:
        """Forget the oldest finished jobs beyond `keep_finished`, here and in the store."""
        keep = self._queue.keep_finished
        with self._lock:
            finished = [j for j in self._jobs.values() if j.state.finished]
            for old in finished[: max(0, len(finished) - keep)]:
                del self._jobs[old.id]
        if self._store and len(finished) > keep:
            self._store.delete_oldest_finished(keep)

    # -- the clients' side ------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._lock:
            self._queue.check_room()
            if job.owner is not None and self._queue.max_per_owner:
                self._queue.check_owner_room(job.owner, sum(
                    1 for waiting in self._waiting if isinstance(waiting, Job) and waiting.owner == job.owner))
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify_all()
        self.persist(job)

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state.finished:
                return job
            job.cancel_requested = True
            if job.state is not JobState.QUEUED:
                return job  # running: its next step stops it
            self._waiting.remove(job)
        self._queue.end(job, JobState.CANCELLED, CANCELLED, "the job was cancelled")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self, owner: str | None = None) -> list[Job]:
        with self._lock:
            return [job for job in reversed(self._jobs.values()) if owner is None or job.owner == owner]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def waiting_here(self) -> int:
        return len(self._waiting)  # alone, the whole queue waits for this worker

    def is_my_turn(self, task: str, interval_s: float) -> bool:
        return True  # alone, every turn is this server's
