"""A job, what it can end as, and the chore: what waits in the queue (see `alice.jobs.queue`).

Plain data and its lifecycle's vocabulary, shared by the queue and its backends; no threads here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, AsyncIterator, Callable

from alice.engine.generate import GenerationSpec
from alice.engine.previews import Preview
from alice.jobs import records

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


class OwnerQueueFull(QueueFull):
    """One key already has ALICE_MAX_QUEUED_PER_KEY jobs waiting: its share, not the queue, is full."""

    code = "too_many_queued_jobs"

    def __init__(self, owner: str, waiting: int, retry_after_s: int) -> None:
        Exception.__init__(self, f"key '{owner}' already has {waiting} jobs waiting (ALICE_MAX_QUEUED_PER_KEY); "
                                 "try again when one has started")
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
    owner: str | None = None  # the name of the key that submitted it (None on a server without keys)
    cancel_requested: bool = False
    # Live previews the client asked for, and those made so far: in this server's memory only
    # (never in the records: a replica watching another's job sees none). Dropped a while after
    # the job ends (see JobQueue._keep_previews_of).
    previews: int = 0
    preview_frames: list[Preview] = field(default_factory=list, repr=False)
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


@dataclass(eq=False)
class Chore:
    """Work for the worker that is no generation (loading or unloading a model), with the
    future its caller waits on."""

    run: Callable[[], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
