"""Jobs: every generation waits in one FIFO queue and one worker thread runs them.

One thread owns the GPU, so two generations never overlap and a model switch never
happens under a running one. Requests arrive on the event loop, put a job here and
await it, which keeps the loop free for `/health` and lets queued work be listed and
cancelled (BentoML's own thread limiter hides what waits in it).

Loading or unloading a model is a chore for the same worker: it waits its turn in the same
FIFO as the generations, counted against the same bound, so it can neither overlap a
generation nor jump ahead of the jobs queued before it, and a flood of them is refused with
QueueFull like a flood of generations.

A job's last part, saving its images (PNG encoding, fsync), needs no GPU: it runs on a
second thread while the worker starts the next job, so the GPU does not wait for the disk.

Jobs that can share one pipeline call (same model and drawing settings, see
`generate.batch_key`) run as one batch: the worker takes the job at the head of the queue and
the jobs right behind it while they can share its call and their images fit (`max_images`).
The first job that cannot join (other settings, a chore, too many images) ends the batch, even
if a later one could join: no job is ever overtaken by a later job it could not share with.
Within the batch every job keeps its own progress, cancel, deadline and result.

This is the queue of one server, its records in SQLite. Replicas that share one queue in
PostgreSQL (ALICE_DATABASE_URL) run `alice.jobs.shared.SharedJobQueue`, the same worker over
a queue that lives in the database.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, AsyncIterator, Callable

from alice.engine.generate import GenerationSpec, GenerationStopped, batch_key
from alice.jobs import records
from alice.jobs.sqlite import SqliteJobStore

logger = logging.getLogger("alice.jobs")

CANCELLED = "cancelled"
DEADLINE = "deadline exceeded"


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class QueueFull(Exception):
    """No room in the queue; the client should try again later."""

    code = "queue_full"  # the error code clients see

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full ({waiting} jobs waiting); try again later")
        self.retry_after_s = retry_after_s


class JobFailure(Exception):
    """Raised by an executor for a failure with a known cause (code) and a message for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Job:
    """One generation request and what became of it. Mutated only under the queue's lock."""

    model: str
    spec: GenerationSpec
    source: str
    deadline: float  # time.time() after which the job is stopped
    id: str = field(default_factory=lambda: "job-" + secrets.token_hex(12))
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    generated: float | None = None  # the generation ended; its images were saved after
    finished: float | None = None
    step: int = 0
    total_steps: int = 0
    error: str | None = None
    error_code: str | None = None
    images: list[str] = field(default_factory=list)
    batch: int = 0  # images drawn in one pipeline call with this job's (its own included); 0 = none yet
    replica: str | None = None  # the server that ran it (ALICE_REPLICA_NAME)
    cancel_requested: bool = False
    _watchers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def progress(self) -> float:
        if self.state is JobState.SUCCEEDED:
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    def record(self) -> dict[str, Any]:
        """What is persisted (see `records` for its shape)."""
        return records.job_record(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        fields = records.job_fields(record)
        return cls(**{**fields, "state": JobState(fields["state"])})

    def update_from(self, record: dict[str, Any]) -> bool:
        """Take what another server wrote into this job's record; True if anything changed."""
        fields = records.job_fields(record)
        fields["state"] = JobState(fields["state"])
        changed = False
        for name in _FOLLOWED:
            if getattr(self, name) != fields[name]:
                setattr(self, name, fields[name])
                changed = True
        return changed

    async def watch(self) -> AsyncIterator[Job]:
        """Yields the job now and after every change, until it has finished."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def notify() -> None:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # the waiting loop has closed; nobody listens any more
                pass

        self._watchers.append(notify)
        try:
            while True:
                yield self
                if self.state.finished:
                    return
                await changed.wait()
                changed.clear()
        finally:
            self._watchers.remove(notify)

    async def wait(self) -> Job:
        async for _ in self.watch():
            pass
        return self

    def _notify(self) -> None:
        for notify in list(self._watchers):
            notify()


_FOLLOWED = ("state", "started", "generated", "finished", "step", "total_steps", "error", "error_code", "images",
             "batch", "replica")
"""What changes in a job's record while it runs (the rest is fixed at submission)."""


class JobControl:
    """What an executor may do to the job it runs: report steps and images, ask whether to stop."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self._queue, self._job = queue, job

    def step(self, step: int, total: int) -> None:
        with self._queue._lock:
            self._job.step, self._job.total_steps = step, total
            self._job._notify()

    def should_stop(self) -> str | None:
        if self._job.cancel_requested:
            return CANCELLED
        if time.time() > self._job.deadline:
            return DEADLINE
        return None

    def batched(self, images: int) -> None:
        """Say how many images shared a pipeline call with this job's (its own included)."""
        with self._queue._lock:
            self._job.batch = images

    def add_image(self, name: str) -> None:
        """Record a saved image at once, so a crash later still knows to clean it up."""
        with self._queue._lock:
            self._job.images.append(name)
        self._queue._persist(self._job)


@dataclass(eq=False)
class Chore:
    """Work for the worker that is no generation (loading or unloading a model), with the
    future its caller waits on."""

    run: Callable[[], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


FinishUp = Callable[[], None]
"""The rest of a job after its generation (saving the images); runs beside the next job."""

Executor = Callable[[list[Job], list[JobControl]], list[Any]]
"""Runs the generation of a batch of jobs (one JobControl each) and returns, per job, what is
left to do (FinishUp or None) or the exception that ended that job alone (GenerationStopped,
JobFailure). Raising ends every job of the batch with that exception. A FinishUp raises
GenerationStopped or JobFailure when its job has no result."""

BatchLimit = Callable[[Job], int]
"""How many images one pipeline call may draw for jobs like this one (1: no batching)."""

_FAILED = object()  # what _attempt returns when the job has ended without a result

ImagesHook = Callable[[list[str]], None]
FinishHook = Callable[[Job], None]


class JobQueue:
    """A bounded FIFO of jobs and the single worker thread that runs them."""

    def __init__(
        self,
        execute: Executor,
        max_waiting: int,
        *,
        store: SqliteJobStore | None = None,
        discard_images: ImagesHook | None = None,
        on_finish: FinishHook | None = None,
        keep_finished: int = 500,
        max_images: BatchLimit = lambda job: 1,
    ) -> None:
        """`discard_images` deletes the images of a job that ended without success;
        `on_finish` sees every job that ends (for metrics); `max_images` bounds a batch."""
        self._execute = execute
        self._max_images = max_images
        self._max_waiting = max_waiting
        self._store = store
        self._discard_images = discard_images or (lambda names: None)
        self._on_finish = on_finish or (lambda job: None)
        self._keep_finished = keep_finished
        self._lock = threading.Condition()
        self._waiting: collections.deque[Job | Chore] = collections.deque()  # one FIFO for both
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._running: list[Job] = []  # the batch being generated
        self._chore_running = False
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._recent_seconds: collections.deque[float] = collections.deque(maxlen=20)
        self._finisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="alice-finisher")
        self._finishing: concurrent.futures.Future | None = None  # the last job handed to the finisher
        if store:
            self._restore(store.load_all())

    def _restore(self, records: list[dict[str, Any]]) -> None:
        """Pick up where the last process stopped: queued jobs wait again (in order);
        a job that was running died with the process, and its partial images go."""
        for record in records[-self._keep_finished - self._max_waiting - 1 :]:
            job = Job.from_record(record)
            self._jobs[job.id] = job
            if job.state is JobState.QUEUED:
                self._waiting.append(job)
            elif job.state is JobState.RUNNING:
                self._discard_images(job.images)
                job.images = []
                job.state, job.finished = JobState.FAILED, time.time()
                job.error_code, job.error = "interrupted", "the server stopped while this job ran"
                self._persist(job)
                logger.warning("job %s was running when the server stopped; marked failed", job.id)
        if self._waiting:
            logger.info("%d queued jobs restored from the last run", len(self._waiting))

    def _persist(self, job: Job) -> None:
        if self._store:
            self._store.save(job.record())

    # -- the worker ----------------------------------------------------------------
    def start(self, warm_up: Callable[[], None] | None = None) -> None:
        """Start the worker; `warm_up` runs on it first (loading the default model)."""
        self._thread = threading.Thread(target=self._work, args=(warm_up,), name="alice-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new work, let the running job finish (up to `timeout`), leave queued ones queued."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._accepting = False
            self._lock.notify_all()
        if self._thread:
            self._thread.join(timeout)
        if self._finishing:
            concurrent.futures.wait([self._finishing], max(0.0, deadline - time.monotonic()))
        self._finisher.shutdown(wait=False)

    def _work(self, warm_up: Callable[[], None] | None) -> None:
        if warm_up:
            try:
                warm_up()
            except Exception:  # the server stays up and reports the problem on /health
                logger.exception("warm-up failed")
        while True:
            work = self._next_work()
            if work is None:
                return
            if isinstance(work, Chore):
                self._do_chore(work)
                continue
            for job in work:
                self._persist(job)
            self._run(work)

    def _next_work(self) -> Chore | list[Job] | None:
        """Wait for the next chore or batch of jobs (marked running); None once stopped."""
        with self._lock:
            while True:
                while self._accepting and not self._waiting:
                    self._lock.wait()
                if not self._accepting:
                    return None
                item = self._waiting.popleft()
                if isinstance(item, Chore):
                    self._chore_running = True
                    return item
                if self._expired(item):
                    continue
                batch = [item, *self._companions(item)]
                self._mark_running(batch)
                return batch

    def _mark_running(self, batch: list[Job]) -> None:
        """Make a batch the one being generated (under the lock)."""
        started = time.time()
        for job in batch:
            job.state, job.started = JobState.RUNNING, started
            job._notify()
        self._running = batch

    def _expired(self, job: Job) -> bool:
        """End a job that waited past its deadline (under the lock)."""
        if time.time() <= job.deadline:
            return False
        self._finish(job, JobState.FAILED, DEADLINE, f"the job waited past its deadline ({DEADLINE})")
        return True

    def _companions(self, head: Job) -> list[Job]:
        """Take the waiting jobs that join `head`'s batch (under the lock): the ones right behind
        it, in order, while they can share its pipeline call and the images fit; the first that
        cannot ends the batch, so no job is overtaken by a later one it could not share with."""
        limit = self._max_images(head)
        images = head.spec.num_images
        key = (head.model, batch_key(head.spec))
        taken: list[Job] = []
        while self._waiting:
            job = self._waiting[0]
            if isinstance(job, Chore) or (job.model, batch_key(job.spec)) != key:
                break
            if images + job.spec.num_images > limit:
                break
            self._waiting.popleft()
            if not self._expired(job):
                taken.append(job)
                images += job.spec.num_images
        return taken

    def run_on_worker(self, run: Callable[[], Any]) -> concurrent.futures.Future:
        """Queue `run` (loading or unloading a model) behind the jobs already waiting, counted
        against the same bound (QueueFull beyond it); the future holds its result."""
        chore = Chore(run)
        with self._lock:
            self._check_room()
            self._waiting.append(chore)
            self._lock.notify_all()
        return chore.future

    def _do_chore(self, chore: Chore) -> None:
        try:
            chore.future.set_result(chore.run())
        except Exception as exc:  # handed to whoever waits on it
            chore.future.set_exception(exc)
        finally:
            with self._lock:
                self._chore_running = False

    def _run(self, batch: list[Job]) -> None:
        try:
            outcomes = self._execute(batch, [JobControl(self, job) for job in batch])
        except Exception as exc:  # the whole batch failed (the model would not load, out of memory)
            outcomes = [exc] * len(batch)
        finished: list[tuple[Job, FinishUp | None]] = []
        for job, outcome in zip(batch, outcomes):
            finish_up = self._attempt(job, lambda outcome=outcome: _result(outcome))
            if finish_up is not _FAILED:
                finished.append((job, finish_up))
        with self._lock:
            generated = time.time()
            for job, _ in finished:
                job.generated = generated
                # Its share of the batch's time: what a waiting job adds to the wait (Retry-After).
                self._recent_seconds.append((generated - (job.started or job.created)) / len(batch))
            self._running = []
        if not finished:
            return
        if self._finishing:
            # At most one finished batch waits for its images to be saved (memory stays bounded).
            concurrent.futures.wait([self._finishing])
        for job, finish_up in finished:
            self._finishing = self._finisher.submit(self._complete, job, finish_up)

    def _complete(self, job: Job, finish_up: FinishUp | None) -> None:
        """On the finisher thread: save the job's images, then mark it succeeded (or what it became)."""
        try:
            if finish_up and self._attempt(job, finish_up) is _FAILED:
                return
            if job.cancel_requested:  # cancelled after its last step: still no image for anyone
                self._finish(job, JobState.CANCELLED, CANCELLED, "the job was cancelled")
            else:
                self._finish(job, JobState.SUCCEEDED)
        except Exception:  # a future would keep it silently
            logger.exception("finishing job %s failed", job.id)

    def _attempt(self, job: Job, work: Callable[[], Any]) -> Any:
        """Run one part of a job; if it fails, end the job with the reason and return _FAILED."""
        try:
            return work()
        except GenerationStopped as stop:
            if stop.reason == CANCELLED:
                self._finish(job, JobState.CANCELLED, CANCELLED, "the job was cancelled")
            else:
                self._finish(job, JobState.FAILED, "timeout", f"the job was stopped: {stop.reason}")
        except JobFailure as failure:
            self._finish(job, JobState.FAILED, failure.code, str(failure))
        except Exception as exc:  # never let one bad job kill the worker
            logger.exception("job %s failed", job.id)
            self._finish(job, JobState.FAILED, "internal_error", f"generation failed: {type(exc).__name__}")
        return _FAILED

    def _finish(self, job: Job, state: JobState, code: str | None = None, error: str | None = None) -> None:
        discarded: list[str] = []
        with self._lock:
            if state is not JobState.SUCCEEDED:
                # A cancelled or failed job hands out no image, not even the ones it finished.
                discarded, job.images = job.images, []
            job.state, job.finished = state, time.time()
            job.error_code, job.error = code, error
            self._running = [other for other in self._running if other is not job]
            self._forget_old()
        self._discard_images(discarded)
        self._persist(job)
        with self._lock:
            job._notify()
        self._on_finish(job)
        logger.info("job %s %s%s", job.id, state.value, f" ({code})" if code else "")

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state.finished]
        for job in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job.id]
        if self._store and len(finished) > self._keep_finished:
            self._store.delete_oldest_finished(self._keep_finished)

    # -- the clients' side --------------------------------------------------------
    def submit(self, model: str, spec: GenerationSpec, source: str, timeout_s: float) -> Job:
        """Queue a job, or raise QueueFull when `max_waiting` jobs and chores already wait."""
        with self._lock:
            self._check_room()
            job = Job(model=model, spec=spec, source=source, deadline=time.time() + timeout_s)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify_all()
        self._persist(job)
        logger.info("job %s queued (%s, model %s)", job.id, source, model)
        return job

    def _check_room(self) -> None:
        """Raise QueueFull when `max_waiting` jobs and chores already wait (under the lock)."""
        # One waiting while nothing runs is about to start, so it takes the running slot.
        room = self._max_waiting + (0 if self._running or self._chore_running else 1)
        if not self._accepting or len(self._waiting) >= room:
            raise QueueFull(len(self._waiting), self._retry_after_s())

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or a running one at its next step; None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state.finished:
                return job
            job.cancel_requested = True
            if job.state is JobState.QUEUED:
                self._waiting.remove(job)
                queued = True
            else:
                queued = False
        if queued:
            self._finish(job, JobState.CANCELLED, CANCELLED, "the job was cancelled")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        """All known jobs, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def waiting_here(self) -> int:
        """What waits for this server's own worker (the `alice_queue_depth` gauge): here the
        whole queue; replicas that share one count only their own chores."""
        return len(self._waiting)

    @property
    def running(self) -> Job | None:
        """The first job of the batch being generated."""
        return self._running[0] if self._running else None

    def is_my_turn(self, task: str, interval_s: float) -> bool:
        """Whether this server does a periodic task now: always, alone; replicas take turns."""
        return True

    def _retry_after_s(self) -> int:
        """A fair guess at when a slot frees up: the average recent job time times the queue."""
        average = sum(self._recent_seconds) / len(self._recent_seconds) if self._recent_seconds else 10.0
        return max(1, min(600, round(average * max(1, len(self._waiting)))))


def _result(outcome: Any) -> Any:
    """A job's outcome from the executor: what is left to do, or raise what ended it."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
