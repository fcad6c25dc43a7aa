"""The shared queue against a real PostgreSQL (Debian's, started by the test): claims with
SKIP LOCKED, replicas that each run jobs once, reads and cancels from another replica, leases
that run out, the global bound, schema creation by replicas starting together."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from alice.engine.generate import GenerationSpec
from alice.job_stores.postgres import MIGRATIONS, PostgresJobStore
from alice.jobs import Job, JobState, QueueFull
from alice.shared_jobs import SharedJobQueue
from tests.postgres_server import fresh_database, postgres_bin, postgres_server
from tests.unit.test_jobs import SteppingExecutor, wait_until

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is installed by `make test-tools`")

SPEC = GenerationSpec(prompt="p", seed=0)


@pytest.fixture(scope="module")
def server():
    with postgres_server() as url:
        yield url


@pytest.fixture
def url(server):
    return fresh_database(server)


@pytest.fixture
def replicas(url):
    """Two started replicas on one database, each with its own stepping executor."""
    made = []

    def make(name: str, steps: int = 5, step_s: float = 0.02, lease_s: float = 2.0, **options):
        executor = SteppingExecutor(steps, step_s)
        queue = SharedJobQueue(executor, 10, store=PostgresJobStore(url), replica=name, lease_s=lease_s, **options)
        queue.executor = executor
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.executor.release.set()
        queue.stop(5)


def queued_record(job_id: str, created: float, **fields) -> dict:
    return Job(model="m", spec=SPEC, source=job_id, deadline=time.time() + 60, id=job_id, created=created,
               **fields).record()


def test_replicas_starting_together_create_the_schema_once(url):
    errors: list[BaseException] = []
    stores: list[PostgresJobStore] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            stores.append(PostgresJobStore(url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(stores) == 6
    with stores[0]._connection() as db:
        assert db.execute("SELECT version FROM alice_schema").fetchall() == [(len(MIGRATIONS),)]
    for store in stores:
        store.close()


def test_two_connections_claim_different_jobs_with_skip_locked(url):
    first, second = PostgresJobStore(url), PostgresJobStore(url)
    for index in range(2):
        assert first.insert(queued_record(f"job-{index}", 1000.0 + index), 10, 5) is None
    inside, go_on = threading.Event(), threading.Event()
    claimed: dict[str, list[str]] = {}

    def hold(records):  # keeps the first claim's transaction (and its row lock) open
        inside.set()
        go_on.wait(10)
        return [{**records[0], "state": "running"}]

    thread = threading.Thread(target=lambda: claimed.setdefault(
        "first", [r["id"] for r in first.claim("a", 30, lambda head: 0, hold)]))
    thread.start()
    assert inside.wait(10)
    # While the head is locked, the other replica skips it and takes the next.
    claimed["second"] = [r["id"] for r in second.claim("b", 30, lambda head: 5, lambda records: [
        {**records[0], "state": "running"}])]
    go_on.set()
    thread.join(10)
    assert claimed == {"first": ["job-0"], "second": ["job-1"]}
    assert second.claim("b", 30, lambda head: 5, lambda records: records) == []  # none left
    assert {r["id"]: (r["state"]) for r in first.recent(10)} == {"job-0": "running", "job-1": "running"}


def test_two_replicas_run_every_job_once_each(replicas):
    one, two = replicas("one", steps=4, step_s=0.03), replicas("two", steps=4, step_s=0.03)
    one.start()
    two.start()
    jobs = [(one if index % 2 else two).submit("m", SPEC, f"job{index}", 60) for index in range(8)]
    for job in jobs:
        asyncio.run(asyncio.wait_for(job.wait(), 30))
    assert all(job.state is JobState.SUCCEEDED and job.images == [f"{job.source}.png"] for job in jobs)
    ran = one.executor.order + two.executor.order
    assert sorted(ran) == sorted(job.source for job in jobs)  # each once, nowhere twice
    assert one.executor.order and two.executor.order  # both GPUs worked
    records = {job.id: job for job in one.list()}
    assert {records[job.id].replica for job in jobs} == {"one", "two"}
    assert all(records[job.id].replica == ("one" if job.source in one.executor.order else "two") for job in jobs)


def test_a_job_is_read_followed_and_cancelled_from_another_replica(replicas):
    runner, other = replicas("runner", steps=200, step_s=0.02), replicas("other")
    runner.start()
    job = runner.submit("m", SPEC, "long", 60)
    wait_until(lambda: job.step >= 2, 10)
    other.start()  # started now: it finds no queued job to take
    seen = other.get(job.id)
    assert seen is not job and seen.state is JobState.RUNNING and seen.replica == "runner"
    first_step = seen.step
    wait_until(lambda: other.get(job.id).step > first_step, 5)  # progress written while it runs
    states: list[str] = []

    async def follow():
        async for current in seen.watch():
            states.append(f"{current.state.value}:{current.step}")

    cancelled_at = time.monotonic()
    assert other.cancel(job.id).cancel_requested
    asyncio.run(asyncio.wait_for(follow(), 10))
    assert job.state is JobState.CANCELLED and seen.state is JobState.CANCELLED
    assert time.monotonic() - cancelled_at < 5  # the next heartbeat carries it, the next step stops it
    assert job.step < 200 and len(states) >= 2 and states[-1].startswith("cancelled")
    # A queued job, cancelled from the replica that does not hold it, ends at once.
    runner.executor.release.clear()
    busy = runner.submit("m", SPEC, "busy", 60)
    wait_until(lambda: busy.state is JobState.RUNNING, 10)
    other.executor.release.clear()
    held = other.submit("m", SPEC, "held", 60)
    wait_until(lambda: held.state is JobState.RUNNING, 10)
    queued = runner.submit("m", SPEC, "queued", 60)
    assert other.cancel(queued.id).state is JobState.CANCELLED
    wait_until(lambda: queued.state is JobState.CANCELLED, 5)  # the submitter's copy follows
    assert runner.get(queued.id).error_code == "cancelled"


def test_a_dead_replicas_job_fails_when_its_lease_runs_out_and_the_queue_goes_on(url, replicas):
    ghost = PostgresJobStore(url)
    ghost.insert(queued_record("job-dying", 1000.0), 10, 5)
    ghost.insert(queued_record("job-behind", 1001.0), 10, 5)
    [claimed] = ghost.claim("ghost", 1.0, lambda head: 0, lambda records: [
        {**records[0], "state": "running", "replica": "ghost"}])
    assert ghost.update({**claimed, "images": ["half.png"], "step": 3}, "ghost")
    ghost.close()  # the replica dies: nobody renews the lease
    discarded: list[str] = []
    survivor = replicas("survivor", lease_s=1.0, discard_images=discarded.extend)
    died = time.monotonic()
    survivor.start()
    wait_until(lambda: survivor.get("job-dying").state.finished, 10)
    dying = survivor.get("job-dying")
    assert time.monotonic() - died < 6  # a 1 s lease, checked four times a second (slack for a busy machine)
    assert dying.state is JobState.FAILED and dying.error_code == "interrupted" and dying.replica == "ghost"
    assert dying.images == [] and discarded == ["half.png"]
    wait_until(lambda: survivor.get("job-behind").state.finished, 10)
    behind = survivor.get("job-behind")
    assert behind.state is JobState.SUCCEEDED and behind.replica == "survivor"
    # A running replica renews its lease: its slow job outlives many leases.
    slow = survivor.submit("m", SPEC, "slow", 60)
    survivor.executor.steps, survivor.executor.step_s = 30, 0.1  # 3 s, three leases
    asyncio.run(asyncio.wait_for(slow.wait(), 20))
    assert slow.state is JobState.SUCCEEDED


def test_the_queue_bound_is_global(url, replicas):
    one, two = replicas("one"), replicas("two")
    one._max_waiting = two._max_waiting = 2  # nobody runs them: neither replica is started
    one.submit("m", SPEC, "a", 60)
    two.submit("m", SPEC, "b", 60)
    with pytest.raises(QueueFull) as full:
        one.submit("m", SPEC, "c", 60)
    assert full.value.retry_after_s >= 1
    with pytest.raises(QueueFull):
        two.submit("m", SPEC, "c", 60)
    assert PostgresJobStore(url).waiting() == 2


def test_a_periodic_task_runs_on_one_replica_per_interval(url):
    one, two = PostgresJobStore(url), PostgresJobStore(url)
    assert [one.due("retention", 60), two.due("retention", 60), one.due("retention", 60)] == [True, False, False]
    assert two.due("other", 60)


def test_a_replica_claims_the_jobs_behind_the_head_that_share_its_call(replicas):
    other = GenerationSpec(prompt="p", seed=0, steps=24)
    replica = replicas("one", max_images=lambda job: 3)
    replica.executor.release.clear()
    replica.start()
    running = replica.submit("m", SPEC, "running", 60)
    wait_until(lambda: running.state is JobState.RUNNING, 10)
    jobs = [replica.submit("m", spec, source, 60)
            for spec, source in ((SPEC, "a"), (SPEC, "b"), (SPEC, "c"), (SPEC, "d"), (other, "x"), (SPEC, "e"))]
    replica.executor.release.set()
    for job in jobs:
        asyncio.run(asyncio.wait_for(job.wait(), 30))
    # Three images at most; x ends the batch it cannot join, and e does not overtake it.
    assert replica.executor.order == ["running", "a+b+c", "d", "x", "e"]
    assert [job.batch for job in jobs] == [3, 3, 3, 1, 1, 1]
    assert all(job.state is JobState.SUCCEEDED for job in jobs)


def test_a_replica_that_lost_its_lease_writes_nothing_more(url, replicas):
    """Its job was failed by another replica: a late write of the old runner does not undo that."""
    store = PostgresJobStore(url)
    store.insert(queued_record("job-late", 1000.0), 10, 5)
    [claimed] = store.claim("slow", 0.1, lambda head: 0, lambda records: [{**records[0], "state": "running"}])
    time.sleep(0.3)
    [(expired, _)] = store.expire_leases("interrupted", "gone")
    assert expired["state"] == "failed"
    assert not store.update({**claimed, "state": "succeeded", "images": ["late.png"]}, "slow")
    assert store.get("job-late")["state"] == "failed" and store.get("job-late")["images"] == []


def test_a_submission_while_the_database_is_down_is_refused_with_retry_after():
    with postgres_server() as own:
        replica = SharedJobQueue(SteppingExecutor(), 10, store=PostgresJobStore(own), replica="one", lease_s=5)
        replica.submit("m", SPEC, "before", 60)
    # The server is gone now.
    with pytest.raises(QueueFull, match="database cannot be reached") as refused:
        replica.submit("m", SPEC, "after", 60)
    assert refused.value.retry_after_s >= 1
