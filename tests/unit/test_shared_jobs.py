"""The shared queue against a real PostgreSQL (Debian's, started by the test): claims with
SKIP LOCKED, replicas that each run jobs once, reads and cancels from another replica, leases
that run out, the global bound, schema creation by replicas starting together; and the
database going away: an outage, a restart, a hanging table, a replica stopping mid-claim."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import psycopg
import pytest

from alice.engine.generate import GenerationSpec
from alice.jobs.postgres import CANCEL_CHANNEL, MIGRATIONS, PostgresJobStore
from alice.jobs.queue import Job, JobQueue, JobState, OwnerQueueFull, QueueFull
from alice.jobs.shared import QueueUnavailable, SharedJobs
from tests.postgres_server import fresh_database, postgres_bin, postgres_server, table_locked
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
def own_server():
    """A server of the test's own, to stop and restart."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def replicas(url):
    """Replicas on one database, each with its own stepping executor (made, not started)."""
    yield from _replicas(url)


@pytest.fixture
def own_replicas(own_server):
    """Replicas on the test's own server."""
    yield from _replicas(own_server)


def _replicas(url):
    made = []

    def make(name: str, steps: int = 5, step_s: float = 0.02, lease_s: float = 2.0, **options):
        executor = SteppingExecutor(steps, step_s)
        shared = SharedJobs(PostgresJobStore(url), replica=name, lease_s=lease_s)
        queue = JobQueue(executor, 10, backend=shared, **options)
        queue.shared = shared
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
    # A queued job, cancelled from the replica that does not hold it, ends at once. Both
    # replicas are kept busy first; either may take either job (whoever claims first), and
    # holds it: a job that ran to its end at once would leave a replica free.
    runner.executor.release.clear()
    other.executor.release.clear()
    busy = runner.submit("m", SPEC, "busy", 60)
    wait_until(lambda: busy.state is JobState.RUNNING, 10)
    held = other.submit("m", SPEC, "held", 60)  # after the first is claimed: not in its batch
    wait_until(lambda: held.state is JobState.RUNNING, 10)
    assert {busy.replica, held.replica} == {"runner", "other"}
    queued = runner.submit("m", SPEC, "queued", 60)
    assert other.cancel(queued.id).state is JobState.CANCELLED
    wait_until(lambda: queued.state is JobState.CANCELLED, 5)  # the submitter's copy follows
    assert runner.get(queued.id).error_code == "cancelled"


def _listeners(url: str) -> list[int]:
    """Server processes of the connections that LISTEN for cancels."""
    with psycopg.connect(url, autocommit=True) as db:
        return [pid for (pid,) in db.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s AND datname = current_database()",
            (f"LISTEN {CANCEL_CHANNEL}",),
        )]


def test_a_cancel_from_another_replica_stops_the_job_at_its_next_step(url, replicas):
    """Heard at once (LISTEN/NOTIFY), however short a step is: steps of 20 ms here, where the
    heartbeat alone (every 0.25 s) would let a dozen more run. With the listening connection
    killed, the heartbeat still carries the cancel; the listener then comes back by itself."""
    runner, other = replicas("runner", steps=1000, step_s=0.02), replicas("other")
    runner.start()
    wait_until(lambda: len(_listeners(url)) == 1, 10)

    def cancel_while_running(name: str) -> tuple[Job, int]:
        job = runner.submit("m", SPEC, name, 60)
        wait_until(lambda: job.step >= 3, 10)
        at_cancel = job.step
        assert other.cancel(job.id).cancel_requested
        wait_until(lambda: job.state is JobState.CANCELLED, 5)
        return job, at_cancel

    for name in ("first", "second"):
        job, at_cancel = cancel_while_running(name)
        assert job.step <= at_cancel + 2, (at_cancel, job.step)
    [listener] = _listeners(url)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (listener,))
    job, _ = cancel_while_running("while the listener is away")  # the heartbeat's answer
    assert job.error_code == "cancelled"
    wait_until(lambda: len(_listeners(url)) == 1, 10)
    job, at_cancel = cancel_while_running("after it came back")
    assert job.step <= at_cancel + 2, (at_cancel, job.step)


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
    one.max_waiting = two.max_waiting = 2  # nobody runs them: neither replica is started
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
        shared = SharedJobs(PostgresJobStore(own), replica="one", lease_s=5)
        replica = JobQueue(SteppingExecutor(), 10, backend=shared)
        replica.submit("m", SPEC, "before", 60)
    # The server is gone now.
    with pytest.raises(QueueFull, match="the job database is unreachable") as refused:
        replica.submit("m", SPEC, "after", 60)
    assert refused.value.retry_after_s >= 1


@contextlib.contextmanager
def job_log():
    """What alice.jobs logs in the block (ALICE's loggers may not reach the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("alice.jobs")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_while_the_database_is_down_requests_get_unavailable_and_the_job_running_here_ends(own_server, own_replicas):
    replica = own_replicas("one", steps=40, step_s=0.05, lease_s=30)
    replica.start()
    with job_log() as log:
        job = replica.submit("m", SPEC, "outage", 60)
        wait_until(lambda: job.step >= 2, 10)
        own_server.server.stop()
        # Its request still gets its answer: the job runs on, its image is kept.
        asyncio.run(asyncio.wait_for(job.wait(), 30))
        assert job.state is JobState.SUCCEEDED and job.images == ["outage.png"]
        assert replica.get(job.id) is job  # from memory
        for call in (replica.list, lambda: replica.get("job-elsewhere"), lambda: replica.cancel("job-elsewhere"),
                     lambda: replica.submit("m", SPEC, "refused", 60)):
            with pytest.raises(QueueUnavailable, match="the job database is unreachable") as refused:
                call()
            assert refused.value.retry_after_s >= 1 and refused.value.code == "database_unavailable"
        own_server.server.start()
        # Once it is back, the record says what became of the job.
        store = PostgresJobStore(own_server)
        wait_until(lambda: store.get(job.id)["state"] == "succeeded", 20)
        assert store.get(job.id)["images"] == ["outage.png"]
        deadline = time.monotonic() + 10
        while not any(record.levelno == logging.INFO and "answers again" in record.getMessage() for record in log):
            assert time.monotonic() < deadline, [record.getMessage() for record in log]
            time.sleep(0.05)
        store.close()
    warnings = [record for record in log if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()  # once per outage
    assert not [record for record in log if record.levelno >= logging.ERROR or record.exc_info]


def test_replicas_carry_on_when_the_database_restarts(own_server, own_replicas):
    store = PostgresJobStore(own_server)
    store.insert(queued_record("job-before", 1000.0), 10, 5)
    one, two = own_replicas("one", steps=40, step_s=0.05, lease_s=30), own_replicas("two", lease_s=30)
    one.start()
    running = one.submit("m", SPEC, "across", 60)
    wait_until(lambda: running.state is JobState.RUNNING and running.step >= 2, 10)
    own_server.server.restart()
    # The store's connections died with the server: the first statement after gets a new one.
    assert store.get("job-before")["id"] == "job-before"
    two.start()
    asyncio.run(asyncio.wait_for(running.wait(), 30))
    assert running.state is JobState.SUCCEEDED
    after = [replica.submit("m", SPEC, f"after{index}", 60) for index, replica in enumerate((one, two, one, two))]
    for job in after:
        asyncio.run(asyncio.wait_for(job.wait(), 30))
    assert all(job.state is JobState.SUCCEEDED for job in after)
    wait_until(lambda: store.get(running.id)["state"] == "succeeded", 10)
    store.close()


def test_a_cancel_from_the_event_loop_does_not_wait_for_the_database(url, replicas):
    replica = replicas("one")  # not started: the job stays queued
    job = replica.submit("m", SPEC, "hung up", 60)

    async def hang_up() -> float:
        started = time.monotonic()
        replica.cancel(job.id)  # what a request whose client hung up does, on the loop
        return time.monotonic() - started

    with table_locked(url, hold_s=10):
        took = asyncio.run(hang_up())
    # A cancel that waited for the database would wait out the whole hold (10 s); one handed to
    # its thread returns at once, and 2 s leaves room for a loaded machine's thread switches.
    assert took < 2.0, f"the event loop waited {took:.2f} s for the database"
    store = PostgresJobStore(url)
    wait_until(lambda: store.get(job.id)["state"] == "cancelled", 10)  # it still reached the database
    store.close()


def test_gauges_are_this_replicas_own_and_the_shared_depth_is_separate(url, replicas):
    from prometheus_client import REGISTRY

    store = PostgresJobStore(url)
    for index in range(3):  # queued by other replicas
        store.insert(queued_record(f"job-{index}", 1000.0 + index), 10, 5)
    replica = replicas("one")
    replica.shared._sync_once()
    assert REGISTRY.get_sample_value("alice_shared_queue_depth") == 3
    assert REGISTRY.get_sample_value("alice_queue_depth") == 0  # none waits for this replica's own worker
    assert REGISTRY.get_sample_value("alice_jobs_running") == 0
    assert replica.waiting == 3  # /health and Retry-After still see the whole queue
    store.close()


def test_a_replica_stopping_hands_back_the_jobs_it_claimed_but_did_not_start(url, replicas):
    stopping, other = replicas("stopping"), replicas("other")
    job = stopping.submit("m", SPEC, "handed back", 60)
    choose, inside = stopping.shared._choose, threading.Event()

    def choose_while_sigterm_arrives(candidates):
        taken = choose(candidates)
        inside.set()
        wait_until(lambda: not stopping.accepting, 10)
        return taken

    stopping.shared._choose = choose_while_sigterm_arrives
    stopping.start()
    assert inside.wait(10)
    stopping.stop(10)
    assert stopping.executor.order == []
    store = PostgresJobStore(url)
    assert store.get(job.id)["state"] == "queued" and store.get(job.id)["replica"] is None
    other.start()
    wait_until(lambda: store.get(job.id)["state"] == "succeeded", 10)
    assert store.get(job.id)["replica"] == "other" and other.executor.order == ["handed back"]
    store.close()


def test_the_shared_queue_takes_turns_across_keys_and_keeps_each_keys_jobs_its_own(replicas):
    """Ann's burst queued before Bob's single job: Bob's runs next, on whichever replica; each
    key lists its own, from any replica; the owner is in the record; a key's share is bounded."""
    other = GenerationSpec(prompt="p", seed=0, steps=24)
    one = replicas("one", max_images=lambda job: 2, max_per_owner=6)
    one.executor.release.clear()
    one.start()
    running = one.submit("m", SPEC, "a0", 60, owner="ann")
    wait_until(lambda: running.state is JobState.RUNNING, 10)
    burst = [one.submit("m", SPEC, f"a{n}", 60, owner="ann") for n in range(1, 7)]
    with pytest.raises(OwnerQueueFull):
        one.submit("m", SPEC, "a7", 60, owner="ann")
    single = one.submit("m", other, "b", 60, owner="bob")
    two = replicas("two")  # reads only: never started
    assert [job.id for job in two.list("bob")] == [single.id] and two.get(single.id).owner == "bob"
    assert {job.id for job in two.list("ann")} == {job.id for job in [running, *burst]}
    one.executor.release.set()
    for job in [running, *burst, single]:
        asyncio.run(asyncio.wait_for(job.wait(), 30))
    assert one.executor.order == ["a0", "b", "a1+a2", "a3+a4", "a5+a6"]
