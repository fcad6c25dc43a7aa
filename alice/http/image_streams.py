"""`stream: true` on the Images API: the job's live previews as partial images while it
draws, then each image completed (the very PNG the unstreamed answer holds), as Server-Sent
Events (alice/protocol/image_events.py)."""

from __future__ import annotations

from typing import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from alice.http.errors import job_error
from alice.http.handling import image_b64
from alice.jobs.queue import Job
from alice.protocol import image_events as events
from alice.protocol.previews import preview_png_b64
from alice.serving.runtime import Runtime


def image_event_stream(job: Job, runtime: Runtime, kind: events.EventKind) -> StreamingResponse:
    return StreamingResponse(
        _events(job, runtime, kind),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(job: Job, runtime: Runtime, kind: events.EventKind) -> AsyncIterator[str]:
    frames = job.preview_frames  # kept a while after the job ends: the last ones are still sent
    spec, sent = job.spec, 0
    try:
        async for _ in job.watch():
            while sent < len(frames):
                # Scaling and encoding off the event loop: other clients' requests go on.
                b64 = await run_in_threadpool(preview_png_b64, frames[sent], spec.width, spec.height)
                yield events.sse(events.partial_image_event(kind, spec, frames[sent].index, b64))
                sent += 1
        error = job_error(job)
        if error:
            yield events.sse(events.error_event(error.message, error.type, error.code))
            return
        for name in job.images:
            b64 = await run_in_threadpool(image_b64, runtime, name)
            yield events.sse(events.completed_event(kind, spec, b64))
    finally:
        # The client hung up mid-stream (Starlette cancels the generator): stop its job.
        if not job.state.finished:
            runtime.jobs.cancel(job.id)
