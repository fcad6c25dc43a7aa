"""The one interface between the job queue and where its jobs wait and its records live.

`alice.jobs.queue.JobQueue` is the worker and the job lifecycle, the same for every server; a
`JobBackend` chosen at construction holds what differs:

- `alice.jobs.local.LocalJobs`: one server. Jobs and chores wait in one FIFO in memory, the
  records are in SQLite; a restart picks up the queued jobs.
- `alice.jobs.shared.SharedJobs`: replicas that share one queue in PostgreSQL
  (ALICE_DATABASE_URL). Jobs wait as rows that any replica's worker claims; leases, a sync
  thread and LISTEN/NOTIFY carry progress and cancels between replicas.

The queue and its backend share one lock, the queue's (`QueueSide.lock`): jobs, the running
batch and the backend's own waiting line change only under it.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from alice.jobs.job import Chore, Job, JobState

BatchLimit = Callable[[Job], int]
"""How many images one pipeline call may draw for jobs like this one (1: no batching)."""

ImagesHook = Callable[[list[str]], None]
FinishHook = Callable[[Job], None]


class QueueSide(Protocol):
    """What a backend may use of the queue it serves: its lock, bounds and hooks, and the steps
    of a job's lifecycle that stay the queue's."""

    lock: threading.Condition
    max_waiting: int  # jobs and chores that may wait (beyond one that is about to run)
    keep_finished: int  # finished jobs remembered
    max_per_owner: int  # jobs one key may have waiting (0: no bound but max_waiting)
    max_images: BatchLimit
    discard_images: ImagesHook  # deletes the images of a job that ended without success
    on_finish: FinishHook  # sees every job that ends (for metrics)

    @property
    def accepting(self) -> bool:
        """False once the queue stops: no new work is taken."""

    @property
    def busy(self) -> bool:
        """Whether the worker runs a batch or a chore now (under the lock)."""

    @property
    def running(self) -> Job | None:
        """The first job of the batch being generated."""

    def mark_running(self, work: Chore | list[Job]) -> None:
        """Make a chore or a batch the worker's work, taken off the waiting line in the same
        hold of the lock (so the room in the queue stays right)."""

    def end(self, job: Job, state: JobState, code: str | None = None, error: str | None = None) -> None:
        """End a job: a cancelled or failed one hands out no image; its record is written, its
        watchers told, `on_finish` called. The lock may be held (it is reentrant)."""

    def check_room(self) -> None:
        """Raise QueueFull when this server's waiting line is full (under the lock)."""

    def retry_after_s(self) -> int:
        """A fair guess at when a slot frees up (for QueueFull)."""

    def check_owner_room(self, owner: str | None, waiting: int) -> None:
        """Raise OwnerQueueFull when `owner` has `waiting` jobs waiting and that is its bound."""


class JobBackend(Protocol):
    """Where jobs wait and where their records live, for one JobQueue (see the module's notes).

    The worker calls `next_work`; request threads call `submit`, `cancel`, `get`, `list`; a
    job's lifecycle calls `persist` at each change the record keeps and `ended` at its end."""

    def attach(self, queue: QueueSide) -> None:
        """Serve `queue` (called once, by its constructor): a backend with stored records picks
        up where the last process stopped."""

    def start(self) -> None:
        """Before the worker starts: begin any threads of the backend's own."""

    def stop(self) -> None:
        """After the worker has stopped: end those threads, write what is left, let go."""

    def next_work(self) -> Chore | list[Job] | None:
        """On the worker: wait for the next chore or batch of jobs (whose turn it is by
        `alice.jobs.batching`'s round of keys, with its batching rule), marked running with
        `QueueSide.mark_running`; None once the queue stops accepting."""

    def add_chore(self, chore: Chore) -> None:
        """Queue a chore for this server's worker (under the lock, room checked)."""

    def submit(self, job: Job) -> None:
        """Queue a new job, or raise QueueFull (OwnerQueueFull beyond its owner's share,
        QueueUnavailable where a database is away)."""

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or a running one at its next step; None if unknown."""

    def get(self, job_id: str) -> Job | None: ...

    def list(self, owner: str | None = None) -> list[Job]:
        """The jobs known (`owner`'s only, if named), newest first."""

    @property
    def waiting(self) -> int:
        """Everything that waits: jobs anywhere in the queue and this server's chores."""

    @property
    def waiting_here(self) -> int:
        """What waits for this server's own worker (the `alice_queue_depth` gauge)."""

    def is_my_turn(self, task: str, interval_s: float) -> bool:
        """Whether this server does a periodic task now."""

    def persist(self, job: Job) -> None:
        """Write the record of a job that this server runs or ends."""

    def ended(self, job: Job) -> None:
        """A job has ended here and its last record is written: forget what is no longer needed."""
