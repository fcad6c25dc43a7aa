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

(The rule is `alice.jobs.batching`'s.)

Where the jobs wait and where their records live is the queue's backend (`alice.jobs.backend`),
chosen at construction: by default one server's FIFO in memory with its records in SQLite
(`alice.jobs.local.LocalJobs`); for replicas that share one queue in PostgreSQL
(ALICE_DATABASE_URL), `alice.jobs.shared.SharedJobs`. The worker, the finisher and each job's
lifecycle here are the same for both.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable

from alice.engine.generate import GenerationSpec, GenerationStopped
from alice.engine.previews import Preview
from alice.jobs.backend import BatchLimit, FinishHook, ImagesHook, JobBackend
from alice.jobs.job import CANCELLED, DEADLINE, Chore, Job, JobFailure, JobState, OwnerQueueFull, QueueFull
from alice.jobs.local import LocalJobs

__all__ = [  # the job's names, imported from here by the HTTP layer and the runtime
    "CANCELLED", "DEADLINE", "Chore", "Executor", "FinishUp", "Job", "JobControl", "JobFailure", "JobQueue",
    "JobState", "OwnerQueueFull", "QueueFull",
]

logger = logging.getLogger("alice.jobs")


class JobControl:
    """What an executor may do to the job it runs: report steps and images, ask whether to stop."""

    def __init__(self, queue: JobQueue, job: Job) -> None:
        self._queue, self._job = queue, job

    def step(self, step: int, total: int) -> None:
        with self._queue.lock:
            self._job.step, self._job.total_steps = step, total
            self._job._notify()

    def preview(self, preview: Preview) -> None:
        """A live preview of the job's first image: kept on the job for whoever watches it."""
        with self._queue.lock:
            self._job.preview_frames.append(preview)
            self._job._notify()

    def should_stop(self) -> str | None:
        if self._job.cancel_requested:
            return CANCELLED
        if time.time() > self._job.deadline:
            return DEADLINE
        return None

    def batched(self, images: int) -> None:
        """Say how many images shared a pipeline call with this job's (its own included)."""
        with self._queue.lock:
            self._job.batch = images

    def add_image(self, name: str) -> None:
        """Record a saved image at once, so a crash later still knows to clean it up."""
        with self._queue.lock:
            self._job.images.append(name)
        self._queue._backend.persist(self._job)


FinishUp = Callable[[], None]
"""The rest of a job after its generation (saving the images); runs beside the next job."""

Executor = Callable[[list[Job], list[JobControl]], list[Any]]
"""Runs the generation of a batch of jobs (one JobControl each) and returns, per job, what is
left to do (FinishUp or None) or the exception that ended that job alone (GenerationStopped,
JobFailure). Raising ends every job of the batch with that exception. A FinishUp raises
GenerationStopped or JobFailure when its job has no result."""

_FAILED = object()  # what _attempt returns when the job has ended without a result

# Finished jobs whose previews are kept: long enough for a stream to send the last ones after
# its job ends, while the 500 finished jobs the queue remembers keep no pictures.
KEEP_PREVIEWS_OF = 16


class JobQueue:
    """A bounded queue of jobs (its `backend`'s) and the single worker thread that runs them."""

    def __init__(
        self,
        execute: Executor,
        max_waiting: int,
        *,
        backend: JobBackend | None = None,
        discard_images: ImagesHook | None = None,
        on_finish: FinishHook | None = None,
        keep_finished: int = 500,
        max_images: BatchLimit = lambda job: 1,
        max_per_owner: int = 0,
    ) -> None:
        """`backend` holds the waiting jobs and their records (default: this server's FIFO in
        memory, no records kept); `discard_images` deletes the images of a job that ended
        without success; `on_finish` sees every job that ends (for metrics); `max_images`
        bounds a batch; `max_per_owner` bounds one key's waiting jobs (0: only the queue's bound)."""
        self._execute = execute
        self.max_images = max_images
        self.max_waiting = max_waiting
        self.discard_images: ImagesHook = discard_images or (lambda names: None)
        self.on_finish: FinishHook = on_finish or (lambda job: None)
        self.keep_finished = keep_finished
        self.max_per_owner = max_per_owner
        self.lock = threading.Condition()  # reentrant: a backend may end a job while holding it
        self._running: list[Job] = []  # the batch being generated
        self._chore_running = False
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._recent_seconds: collections.deque[float] = collections.deque(maxlen=20)
        self._finisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="alice-finisher")
        self._finishing: concurrent.futures.Future | None = None  # the last job handed to the finisher
        self._backend: JobBackend = backend or LocalJobs()
        self._backend.attach(self)
        self._with_previews: collections.deque[Job] = collections.deque()  # finished, newest last

    # -- the worker ----------------------------------------------------------------
    def start(self, warm_up: Callable[[], None] | None = None) -> None:
        """Start the worker; `warm_up` runs on it first (loading the default model)."""
        self._backend.start()
        self._thread = threading.Thread(target=self._work, args=(warm_up,), name="alice-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new work, let the running job finish (up to `timeout`), leave queued ones queued."""
        deadline = time.monotonic() + timeout
        with self.lock:
            self._accepting = False
            self.lock.notify_all()
        if self._thread:
            self._thread.join(timeout)
        if self._finishing:
            concurrent.futures.wait([self._finishing], max(0.0, deadline - time.monotonic()))
        self._finisher.shutdown(wait=False)
        self._backend.stop()

    def _work(self, warm_up: Callable[[], None] | None) -> None:
        if warm_up:
            try:
                warm_up()
            except Exception:  # the server stays up and reports the problem on /health
                logger.exception("warm-up failed")
        while True:
            work = self._backend.next_work()
            if work is None:
                return
            if isinstance(work, Chore):
                self._do_chore(work)
                continue
            for job in work:
                self._backend.persist(job)
            self._run(work)

    def run_on_worker(self, run: Callable[[], Any]) -> concurrent.futures.Future:
        """Queue `run` (loading or unloading a model) behind the jobs already waiting for this
        server's worker, counted against the same bound (QueueFull beyond it); the future holds
        its result."""
        chore = Chore(run)
        with self.lock:
            self.check_room()
            self._backend.add_chore(chore)
            self.lock.notify_all()
        return chore.future

    def _do_chore(self, chore: Chore) -> None:
        try:
            chore.future.set_result(chore.run())
        except Exception as exc:  # handed to whoever waits on it
            chore.future.set_exception(exc)
        finally:
            with self.lock:
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
        with self.lock:
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
                self.end(job, JobState.CANCELLED, CANCELLED, "the job was cancelled")
            else:
                self.end(job, JobState.SUCCEEDED)
        except Exception:  # a future would keep it silently
            logger.exception("finishing job %s failed", job.id)

    def _attempt(self, job: Job, work: Callable[[], Any]) -> Any:
        """Run one part of a job; if it fails, end the job with the reason and return _FAILED."""
        try:
            return work()
        except GenerationStopped as stop:
            if stop.reason == CANCELLED:
                self.end(job, JobState.CANCELLED, CANCELLED, "the job was cancelled")
            else:
                self.end(job, JobState.FAILED, "timeout", f"the job was stopped: {stop.reason}")
        except JobFailure as failure:
            self.end(job, JobState.FAILED, failure.code, str(failure))
        except Exception as exc:  # never let one bad job kill the worker
            logger.exception("job %s failed", job.id)
            self.end(job, JobState.FAILED, "internal_error", f"generation failed: {type(exc).__name__}")
        return _FAILED

    def _keep_previews_of(self, job: Job) -> None:
        """Keep a finished job's previews while it is among the last KEEP_PREVIEWS_OF that had
        any (under the lock); a job's list is replaced, so a stream holding it loses nothing."""
        if not job.preview_frames:
            return
        self._with_previews.append(job)
        while len(self._with_previews) > KEEP_PREVIEWS_OF:
            self._with_previews.popleft().preview_frames = []

    def end(self, job: Job, state: JobState, code: str | None = None, error: str | None = None) -> None:
        """End a job (see `QueueSide.end`)."""
        discarded: list[str] = []
        with self.lock:
            if state is not JobState.SUCCEEDED:
                # A cancelled or failed job hands out no image, not even the ones it finished.
                discarded, job.images = job.images, []
            job.state, job.finished = state, time.time()
            job.error_code, job.error = code, error
            self._keep_previews_of(job)
            self._running = [other for other in self._running if other is not job]
        self.discard_images(discarded)
        self._backend.persist(job)
        with self.lock:
            job._notify()
        # After the waiter is told: trimming the kept records (SQL once 500 jobs are kept) is
        # bookkeeping no answer waits for.
        self._backend.ended(job)
        self.on_finish(job)
        logger.info("job %s %s%s", job.id, state.value, f" ({code})" if code else "")

    # -- what a backend uses (QueueSide) ----------------------------------------------
    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def busy(self) -> bool:
        return bool(self._running) or self._chore_running

    def mark_running(self, work: Chore | list[Job]) -> None:
        """Make a chore or a batch the worker's work (under the lock)."""
        if isinstance(work, Chore):
            self._chore_running = True
            return
        started = time.time()
        for job in work:
            job.state, job.started = JobState.RUNNING, job.started or started
            job._notify()
        self._running = work

    def check_owner_room(self, owner: str | None, waiting: int) -> None:
        """Raise OwnerQueueFull when `owner` already has `max_per_owner` jobs `waiting`."""
        if owner is not None and self.max_per_owner and waiting >= self.max_per_owner:
            raise OwnerQueueFull(owner, waiting, self.retry_after_s())

    def check_room(self) -> None:
        """Raise QueueFull when `max_waiting` jobs and chores already wait for this server's
        worker (under the lock)."""
        # One waiting while nothing runs is about to start, so it takes the running slot.
        waiting = self._backend.waiting_here
        if not self._accepting or waiting >= self.max_waiting + (0 if self.busy else 1):
            raise QueueFull(waiting, self.retry_after_s())

    def retry_after_s(self) -> int:
        """A fair guess at when a slot frees up: the average recent job time times the line."""
        average = sum(self._recent_seconds) / len(self._recent_seconds) if self._recent_seconds else 10.0
        return max(1, min(600, round(average * max(1, self._backend.waiting_here))))

    # -- the clients' side --------------------------------------------------------
    def submit(self, model: str, spec: GenerationSpec, source: str, timeout_s: float, previews: int = 0,
               owner: str | None = None) -> Job:
        """Queue a job, or raise QueueFull when the queue (or OwnerQueueFull when `owner`'s share
        of it) is full; `previews`: how many live previews of its first image to make while it
        draws; `owner`: the name of the key that asked."""
        job = Job(model=model, spec=spec, source=source, deadline=time.time() + timeout_s, previews=previews,
                  owner=owner)
        self._backend.submit(job)
        logger.info("job %s queued (%s, model %s%s)", job.id, source, model, f", key {owner}" if owner else "")
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or a running one at its next step; None if unknown."""
        return self._backend.cancel(job_id)

    def get(self, job_id: str) -> Job | None:
        return self._backend.get(job_id)

    def list(self, owner: str | None = None) -> list[Job]:
        """All known jobs (`owner`'s only, if named), newest first."""
        return self._backend.list(owner)

    @property
    def waiting(self) -> int:
        """What waits: the jobs of the whole queue and this server's chores."""
        return self._backend.waiting

    @property
    def waiting_here(self) -> int:
        """What waits for this server's own worker (the `alice_queue_depth` gauge): alone, the
        whole queue; replicas that share one count only their own chores."""
        return self._backend.waiting_here

    @property
    def running(self) -> Job | None:
        """The first job of the batch being generated."""
        return self._running[0] if self._running else None

    def is_my_turn(self, task: str, interval_s: float) -> bool:
        """Whether this server does a periodic task now: always, alone; replicas take turns."""
        return self._backend.is_my_turn(task, interval_s)


def _result(outcome: Any) -> Any:
    """A job's outcome from the executor: what is left to do, or raise what ended it."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
