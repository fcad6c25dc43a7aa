"""The job queue on its own: FIFO, bounded, cancellable, deadlines, a worker that survives."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from alice.engine.generate import GenerationSpec, GenerationStopped
from alice.jobs.queue import JobFailure, JobQueue, JobState, QueueFull
from alice.protocol.results import public_job

SPEC = GenerationSpec(prompt="p", seed=0)


class SteppingExecutor:
    """Runs `steps` steps of `step_s` each, honouring stop requests like the engine does, then
    hands back the saving of its image, as the runtime does."""

    def __init__(self, steps: int = 5, step_s: float = 0.01) -> None:
        self.steps, self.step_s = steps, step_s
        self.order: list[str] = []
        self.step_times: dict[str, list[float]] = {}  # per job (its source): time.time() of each step
        self.release = threading.Event()  # cleared: generations wait before their first step
        self.release.set()
        self.saving = threading.Event()  # cleared: saves wait
        self.saving.set()

    def __call__(self, jobs, controls):
        """Steps every job of the batch together, as one pipeline call does; a job that is asked
        to stop leaves the batch, the others go on."""
        self.order.append("+".join(job.source for job in jobs))
        self.release.wait(10)
        outcomes: list = [None] * len(jobs)
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            for index, control in enumerate(controls):
                if outcomes[index] is None:
                    self.step_times.setdefault(jobs[index].source, []).append(time.time())
                    control.step(step, self.steps)
                    if reason := control.should_stop():
                        outcomes[index] = GenerationStopped(reason)
            if all(outcomes):
                break
        for index, (job, control) in enumerate(zip(jobs, controls)):
            if outcomes[index] is None:
                control.batched(len(jobs))
                outcomes[index] = self.result(job, control)
        return outcomes

    def result(self, job, control):
        if job.source in ("boom", "known"):
            control.add_image(f"{job.source}.png")  # saved before it failed: must not be handed out
            if job.source == "boom":
                return RuntimeError("kaput")
            return JobFailure("out_of_memory", "the GPU ran out of memory")
        return lambda: self.save(job, control)

    def save(self, job, control):
        self.saving.wait(10)
        control.add_image(f"{job.source}.png")
        if job.source == "disk full":
            raise OSError("No space left on device")


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def executor():
    return SteppingExecutor()


@pytest.fixture
def queue(executor):
    queue = JobQueue(executor, max_waiting=2)
    queue.start()
    yield queue
    executor.release.set()
    queue.stop(5)


def test_jobs_run_in_order_and_report_progress(queue, executor):
    jobs = [queue.submit("m", SPEC, source, 60) for source in ("a", "b", "c")]
    for job in jobs:
        asyncio.run(job.wait())
    assert executor.order == ["a", "b", "c"]
    assert all(job.state is JobState.SUCCEEDED and job.progress == 1.0 for job in jobs)
    assert jobs[0].images == ["a.png"] and jobs[0].step == 5 and jobs[0].total_steps == 5
    assert [job.id for job in queue.list()] == [job.id for job in reversed(jobs)]


def test_bounded_queue(queue, executor):
    executor.release.clear()
    running = queue.submit("m", SPEC, "running", 60)
    wait_until(lambda: running.state is JobState.RUNNING)
    queue.submit("m", SPEC, "w1", 60)
    queue.submit("m", SPEC, "w2", 60)
    with pytest.raises(QueueFull) as full:
        queue.submit("m", SPEC, "w3", 60)
    assert full.value.retry_after_s >= 1
    assert queue.waiting == 2


def test_chores_wait_their_turn_behind_queued_jobs(executor):
    """Loading or unloading a model runs in FIFO order with the generations, not ahead of them."""
    executor.release.clear()
    queue = JobQueue(executor, max_waiting=5)
    queue.start()
    running = queue.submit("m", SPEC, "running", 60)
    wait_until(lambda: running.state is JobState.RUNNING)
    waiting = queue.submit("m", SPEC, "waiting", 60)
    chore = queue.run_on_worker(lambda: executor.order.append("chore") or "done")
    after = queue.submit("m", SPEC, "after", 60)
    executor.release.set()
    asyncio.run(after.wait())
    assert chore.result(5) == "done"
    queue.stop(5)
    assert executor.order == ["running", "waiting", "chore", "after"]


def test_chores_count_against_the_queue_bound(queue, executor):
    executor.release.clear()
    running = queue.submit("m", SPEC, "running", 60)
    wait_until(lambda: running.state is JobState.RUNNING)
    queue.run_on_worker(lambda: None)
    queue.submit("m", SPEC, "w1", 60)
    with pytest.raises(QueueFull) as full:
        queue.run_on_worker(lambda: None)
    assert full.value.retry_after_s >= 1
    with pytest.raises(QueueFull):
        queue.submit("m", SPEC, "w2", 60)
    assert queue.waiting == 2


def test_a_failing_chore_hands_its_error_to_the_caller(queue):
    def broken():
        raise LookupError("no such model")

    with pytest.raises(LookupError):
        queue.run_on_worker(broken).result(5)
    assert queue.run_on_worker(lambda: 42).result(5) == 42  # the worker lives on


def test_cancel_queued_and_running(queue, executor):
    executor.release.clear()
    running = queue.submit("m", SPEC, "running", 60)
    waiting = queue.submit("m", SPEC, "waiting", 60)
    wait_until(lambda: running.state is JobState.RUNNING)
    queue.cancel(waiting.id)
    assert waiting.state is JobState.CANCELLED
    queue.cancel(running.id)
    executor.release.set()
    asyncio.run(running.wait())
    assert running.state is JobState.CANCELLED and running.images == [] and running.step == 1
    assert executor.order == ["running"]  # the cancelled waiting job never ran
    assert queue.cancel("job-unknown") is None


def test_deadline_in_the_queue_and_while_running(executor):
    """A running job stops at its first step past its deadline; a job whose deadline passes
    while it waits never runs. The deadlines are seconds (a loaded machine starts the first job
    well within them), the check is in steps: what it guards against is a job that runs on."""
    executor.steps, executor.step_s = 1000, 0.02  # 20 s, should the deadline not stop it
    queue = JobQueue(executor, max_waiting=5)
    queue.start()
    try:
        slow = queue.submit("m", SPEC, "slow", 2.0)
        late = queue.submit("m", SPEC, "late", 1.0)  # behind slow, which runs past this deadline
        asyncio.run(late.wait())
        asyncio.run(slow.wait())
        assert slow.state is JobState.FAILED and slow.error_code == "timeout" and slow.step < 1000
        steps_past_deadline = [at for at in executor.step_times["slow"] if at > slow.deadline]
        assert len(steps_past_deadline) <= 1, steps_past_deadline  # the step that saw it, no more
        assert late.state is JobState.FAILED and "deadline" in late.error
        assert executor.order == ["slow"]
    finally:
        queue.stop(5)


def test_worker_survives_failures(queue):
    boom = queue.submit("m", SPEC, "boom", 60)
    known = queue.submit("m", SPEC, "known", 60)
    fine = queue.submit("m", SPEC, "fine", 60)
    asyncio.run(fine.wait())
    assert boom.state is JobState.FAILED and boom.error_code == "internal_error" and "kaput" not in boom.error
    assert known.error_code == "out_of_memory"
    assert boom.images == [] and known.images == []  # a failed job hands out nothing
    assert fine.state is JobState.SUCCEEDED


def test_the_next_generation_starts_while_the_last_images_are_saved(queue, executor):
    executor.saving.clear()
    first = queue.submit("m", SPEC, "first", 60)
    second = queue.submit("m", SPEC, "second", 60)
    third = queue.submit("m", SPEC, "third", 60)
    wait_until(lambda: second.state is JobState.RUNNING and second.step == 5)
    assert first.state is JobState.RUNNING and first.images == []  # still saving
    time.sleep(0.1)
    # Only one job's images may wait to be saved, so the third does not start yet.
    assert executor.order == ["first", "second"] and third.state is JobState.QUEUED
    executor.saving.set()
    for job in (first, second, third):
        asyncio.run(job.wait())
        assert job.state is JobState.SUCCEEDED and job.images == [f"{job.source}.png"]
    assert executor.order == ["first", "second", "third"]
    assert first.started < first.generated <= second.started < second.generated <= first.finished


def test_a_failed_save_fails_its_job_and_nothing_else(queue):
    broken = queue.submit("m", SPEC, "disk full", 60)
    fine = queue.submit("m", SPEC, "fine", 60)
    asyncio.run(fine.wait())
    asyncio.run(broken.wait())
    assert broken.state is JobState.FAILED and broken.error_code == "internal_error" and broken.images == []
    assert fine.state is JobState.SUCCEEDED and fine.images == ["fine.png"]


def test_a_job_cancelled_while_saving_hands_out_no_image(queue, executor):
    executor.saving.clear()
    job = queue.submit("m", SPEC, "late", 60)
    wait_until(lambda: job.step == 5 and queue.running is None)
    queue.cancel(job.id)
    executor.saving.set()
    asyncio.run(job.wait())
    assert job.state is JobState.CANCELLED and job.images == []


def test_stop_waits_for_the_images_being_saved(executor):
    executor.saving.clear()
    queue = JobQueue(executor, max_waiting=5)
    queue.start()
    job = queue.submit("m", SPEC, "last", 60)
    wait_until(lambda: job.step == 5 and queue.running is None)
    threading.Timer(0.2, executor.saving.set).start()
    queue.stop(5)
    assert job.state is JobState.SUCCEEDED and job.images == ["last.png"]


def test_stop_takes_no_new_work_and_finishes_the_running_job(executor):
    executor.steps, executor.step_s = 10, 0.02
    queue = JobQueue(executor, max_waiting=5)
    queue.start()
    running = queue.submit("m", SPEC, "running", 60)
    waiting = queue.submit("m", SPEC, "waiting", 60)
    wait_until(lambda: running.state is JobState.RUNNING)
    queue.stop(5)
    assert running.state is JobState.SUCCEEDED
    assert waiting.state is JobState.QUEUED  # kept, not run, not failed
    with pytest.raises(QueueFull):
        queue.submit("m", SPEC, "late", 60)


def test_watch_sees_every_state(queue):
    async def states(job):
        return [j.state.value async for j in job.watch()]

    job = queue.submit("m", SPEC, "a", 60)
    seen = asyncio.run(states(job))
    assert seen[-1] == "succeeded"


def test_records_survive_a_restart(tmp_path, executor):
    from alice.jobs.local import LocalJobs
    from alice.jobs.sqlite import SqliteJobStore as JobStore

    discarded: list[str] = []
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(executor, max_waiting=5, backend=LocalJobs(store))
    queue.start()
    done = queue.submit("m", SPEC, "done", 60)
    asyncio.run(done.wait())
    queue.stop(5)
    # Fake what a crash leaves: one job mid-run with an image saved, one still queued.
    running = done.record() | {"id": "job-running", "state": "running", "images": ["half.png"], "created": 2e9}
    queued = done.record() | {"id": "job-queued", "state": "queued", "images": [], "created": 2e9 + 1}
    store.save(running)
    store.save(queued)

    restarted = JobQueue(executor, max_waiting=5, backend=LocalJobs(JobStore(tmp_path / "jobs.sqlite3")),
                         discard_images=discarded.extend)
    interrupted = restarted.get("job-running")
    assert interrupted.state is JobState.FAILED and interrupted.error_code == "interrupted"
    assert interrupted.images == [] and discarded == ["half.png"]
    assert restarted.get(done.id).state is JobState.SUCCEEDED and restarted.get(done.id).images == ["done.png"]
    assert restarted.waiting == 1
    restarted.start()
    try:
        wait_until(lambda: restarted.get("job-queued").state.finished)
        assert restarted.get("job-queued").state is JobState.SUCCEEDED
    finally:
        restarted.stop(5)
    again = {r["id"]: r["state"] for r in JobStore(tmp_path / "jobs.sqlite3").load_all()}
    assert again == {done.id: "succeeded", "job-running": "failed", "job-queued": "succeeded"}


# -- batches -------------------------------------------------------------------------------------
@pytest.fixture
def batching_queue(executor):
    """A queue whose batches hold up to three images, its worker held by a running job."""
    executor.release.clear()
    queue = JobQueue(executor, max_waiting=10, max_images=lambda job: 3)
    queue.start()
    running = queue.submit("m", SPEC, "running", 60)
    wait_until(lambda: running.state is JobState.RUNNING)
    yield queue
    executor.release.set()
    queue.stop(5)


def finish(queue, executor, jobs):
    executor.release.set()
    for job in jobs:
        asyncio.run(job.wait())


def test_waiting_jobs_that_can_share_a_call_run_as_one_batch(batching_queue, executor):
    jobs = [batching_queue.submit("m", SPEC, source, 60) for source in ("a", "b", "c", "d")]
    finish(batching_queue, executor, jobs)
    assert executor.order == ["running", "a+b+c", "d"]  # three images at most
    assert [job.batch for job in jobs] == [3, 3, 3, 1]
    assert jobs[0].started == jobs[2].started and jobs[0].generated == jobs[2].generated
    assert all(job.state is JobState.SUCCEEDED and job.images == [f"{job.source}.png"] for job in jobs)
    assert public_job(jobs[0])["batch"] == 3


def test_no_job_is_overtaken_by_a_later_one_it_could_not_share_with(batching_queue, executor):
    other = GenerationSpec(prompt="p", seed=0, steps=24)
    a = batching_queue.submit("m", SPEC, "a", 60)
    x = batching_queue.submit("m", other, "x", 60)
    b = batching_queue.submit("m", SPEC, "b", 60)
    c = batching_queue.submit("other model", SPEC, "c", 60)
    d = batching_queue.submit("other model", SPEC, "d", 60)
    chore = batching_queue.run_on_worker(lambda: executor.order.append("chore"))
    e = batching_queue.submit("other model", SPEC, "e", 60)
    big = batching_queue.submit("other model", GenerationSpec(prompt="p", seed=0, num_images=3), "big", 60)
    finish(batching_queue, executor, [a, x, b, c, d, e, big])
    chore.result(5)
    # b could share a's call but waits behind x; a chore and too many images end a batch too.
    assert executor.order == ["running", "a", "x", "b", "c+d", "chore", "e", "big"]


def test_a_job_cancelled_inside_a_batch_gets_no_image_and_the_others_go_on(batching_queue, executor):
    executor.steps = 20
    jobs = [batching_queue.submit("m", SPEC, source, 60) for source in ("a", "b", "c")]
    executor.release.set()
    wait_until(lambda: jobs[1].state is JobState.RUNNING and jobs[1].step >= 1)
    batching_queue.cancel(jobs[1].id)
    for job in jobs:
        asyncio.run(job.wait())
    assert executor.order[-1] == "a+b+c"
    assert jobs[1].state is JobState.CANCELLED and jobs[1].images == [] and jobs[1].step < 20
    assert [job.state for job in (jobs[0], jobs[2])] == [JobState.SUCCEEDED] * 2
    assert jobs[0].step == 20 and jobs[2].images == ["c.png"]


def test_a_batch_that_raises_fails_each_of_its_jobs(executor):
    def broken(jobs, controls):
        raise JobFailure("model_not_found", "gone")

    queue = JobQueue(broken, max_waiting=5, max_images=lambda job: 4)
    executor.release.clear()
    try:
        blocker = threading.Event()
        queue.run_on_worker(lambda: blocker.wait(5))
        queue.start()
        jobs = [queue.submit("m", SPEC, source, 60) for source in ("a", "b")]
        blocker.set()
        for job in jobs:
            asyncio.run(job.wait())
        assert [job.error_code for job in jobs] == ["model_not_found"] * 2
    finally:
        queue.stop(5)
