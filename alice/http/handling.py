"""Steps every generation route shares: read, validate, queue, wait, collect."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.applications import Starlette
from starlette.requests import Request

from alice.http.auth import current_caller
from alice.http.errors import ApiError, job_error
from alice.http.urls import base_url, image_url
from alice.jobs.queue import Job
from alice.protocol.generation import GenerationSettings
from alice.protocol.results import GenerationResult
from alice.serving.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The Runtime serving this app: the service puts it on the app's state when it starts
    (`serve_runtime`), so a handler never reaches for a process-wide service."""
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise RuntimeError("no runtime on the app's state: the service has not started (or has shut down)")
    return runtime


def serve_runtime(app: Starlette, runtime: Runtime | None) -> None:
    """Let the app's handlers reach `runtime` (None: no longer, the service is shut down)."""
    app.state.runtime = runtime


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; its size was bounded before it was read (request_bodies)."""
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to be read as JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


async def submit(runtime: Runtime, request: GenerationSettings, source: str) -> Job:
    """Queue a request's job off the event loop: an img2img input is decoded, re-encoded and
    fsynced on the way (seconds for a 4096x4096 input), and every other client waits while the loop does."""
    return await run_in_threadpool(runtime.submit, request, source, current_caller().name)


async def wait_for(job: Job, request: Request, runtime: Runtime) -> Job:
    """Wait for a job; a client that hangs up cancels it, so no GPU time goes to nobody."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(hung_up())
    done = asyncio.ensure_future(job.wait())
    try:
        await asyncio.wait({watcher, done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not done.done():
            # The client hung up, or the server cancelled this request (BentoML's traffic
            # timeout, bentoml#5642): the job must not run on for nobody.
            done.cancel()
            runtime.jobs.cancel(job.id)
    if job.cancel_requested and not job.state.finished:
        raise ApiError(499, "the client closed the connection", code="client_closed")
    error = job_error(job)
    if error:
        raise error
    return job


def image_b64(runtime: Runtime, name: str) -> str:
    """A stored PNG as base64: the very bytes its URL serves."""
    return base64.b64encode(runtime.images.path_for(name).read_bytes()).decode()


def image_urls(request: Request, runtime: Runtime, job: Job) -> list[str]:
    base = base_url(request.headers, request.url.scheme, runtime.settings.public_url)
    return [image_url(base, name) for name in job.images]


def result_metadata(job: Job) -> dict[str, Any]:
    """What a client may want to know about how its images were made."""
    return GenerationResult.from_job(job).model_dump(mode="json")
