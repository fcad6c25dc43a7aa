"""Steps every generation route shares: read, validate, queue, wait, collect."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import bentoml
from starlette.requests import Request

from alice.http.errors import ApiError, job_error
from alice.http.urls import base_url, image_url
from alice.jobs import Job
from alice.runtime import Runtime

MAX_BODY_BYTES = 32 << 20  # settings, and an img2img input image as base64


def get_runtime() -> Runtime:
    """The Runtime of the BentoML service instance serving this process."""
    return bentoml.get_current_service().runtime


async def read_json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


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
    spec = job.spec
    started, finished = job.started or job.created, job.finished or job.created
    return {
        "job_id": job.id,
        "model": job.model,
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "seed": spec.seed,
        "seeds": [spec.seed + i for i in range(len(job.images))],
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "scheduler": spec.scheduler,
        "width": spec.width,
        "height": spec.height,
        "num_images": len(job.images),
        **({"strength": spec.strength, "img2img": True} if spec.init_image else {}),
        "timings": {
            "queued_s": round(started - job.created, 4),
            "generation_s": round(finished - started, 4),
            "total_s": round(finished - job.created, 4),
        },
    }
