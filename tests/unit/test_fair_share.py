"""Fair share in one server's queue: the keys take turns (one key's burst of forty jobs does not
starve another key's single one, which waits at most for the batch running when it came), FIFO
within a key, batching still across keys; a bound on one key's waiting jobs; the owner kept
across a restart. The real queue and batching rule over a stepping executor (no drawing)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from alice.jobs.local import LocalJobs
from alice.jobs.queue import JobQueue, JobState, OwnerQueueFull
from alice.jobs.sqlite import SqliteJobStore
from tests.unit.test_jobs import SPEC, SteppingExecutor, wait_until

OTHER = dataclasses.replace(SPEC, steps=24)  # another batch key: never in a batch with SPEC's


def burst_and_single(spec_of_single) -> tuple[JobQueue, SteppingExecutor, list, object, float]:
    """Ann's job runs; she queues forty more, then Bob one. Returns when all have ended."""
    executor = SteppingExecutor(steps=2, step_s=0.002)
    queue = JobQueue(executor, max_waiting=100, max_images=lambda job: 8)
    executor.release.clear()
    queue.start()
    first = queue.submit("m", SPEC, "a0", 60, owner="ann")
    wait_until(lambda: first.state is JobState.RUNNING)
    burst = [queue.submit("m", SPEC, f"a{n}", 60, owner="ann") for n in range(1, 41)]
    single = queue.submit("m", spec_of_single, "b", 60, owner="bob")
    executor.release.set()
    for job in [first, *burst, single]:
        asyncio.run(asyncio.wait_for(job.wait(), 30))
    queue.stop(5)
    return queue, executor, burst, single, time.time()


def test_a_single_job_waits_for_one_batch_not_for_another_keys_burst_of_forty():
    queue, executor, burst, single, _ = burst_and_single(OTHER)
    batches = executor.order
    bobs = next(index for index, batch in enumerate(batches) if "b" in batch.split("+"))
    assert bobs == 1, batches  # behind only the batch that ran when it came (FIFO: behind five more)
    assert batches[0] == "a0" and len(batches) == 1 + 1 + 5  # a1..a40 still eight to a call
    anns = [source for batch in batches for source in batch.split("+") if source != "b"]
    assert anns == [f"a{n}" for n in range(41)]  # first come, first served within a key
    assert single.started < min(job.started for job in burst)


def test_a_single_job_of_the_same_settings_shares_its_turn_with_the_burst():
    _, executor, _, single, _ = burst_and_single(SPEC)
    assert executor.order[1] == "+".join(["b"] + [f"a{n}" for n in range(1, 8)]), executor.order
    assert single.batch == 8


def test_one_keys_waiting_jobs_are_bounded_and_the_others_are_not():
    executor = SteppingExecutor()
    executor.release.clear()
    queue = JobQueue(executor, max_waiting=10, max_per_owner=2)
    queue.start()
    try:
        running = queue.submit("m", SPEC, "a0", 60, owner="ann")
        wait_until(lambda: running.state is JobState.RUNNING)
        queue.submit("m", SPEC, "a1", 60, owner="ann")
        queue.submit("m", SPEC, "a2", 60, owner="ann")
        with pytest.raises(OwnerQueueFull) as full:
            queue.submit("m", SPEC, "a3", 60, owner="ann")
        assert "'ann'" in str(full.value) and full.value.retry_after_s >= 1
        queue.submit("m", SPEC, "b1", 60, owner="bob")
        queue.submit("m", SPEC, "open", 60)  # a server without keys: no owner, no share
    finally:
        executor.release.set()
        queue.stop(5)


def test_the_owner_is_in_the_record_and_survives_a_restart(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(SteppingExecutor(), max_waiting=10, backend=LocalJobs(store))  # never started: stays queued
    job = queue.submit("m", SPEC, "a", 60, owner="ann")
    assert job.record()["owner"] == "ann"
    again = JobQueue(SteppingExecutor(), max_waiting=10, backend=LocalJobs(SqliteJobStore(tmp_path / "jobs.sqlite3")))
    assert again.get(job.id).owner == "ann" and [j.id for j in again.list("ann")] == [job.id]
    assert again.list("bob") == [] and len(again.list()) == 1
