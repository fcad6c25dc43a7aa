"""`POST /generate`, the typed native API, over the Runtime."""

from __future__ import annotations

import bentoml
from starlette.responses import JSONResponse

from alice.http.errors import from_exception
from alice.http.handling import image_b64, image_urls, submit, wait_for
from alice.protocol.native import GeneratedImage, GenerateRequest, GenerateResponse
from alice.serving.runtime import Runtime


async def generate(runtime: Runtime, ctx: bentoml.Context, request: GenerateRequest) -> GenerateResponse | JSONResponse:
    """Queue, wait, answer the images inline (base64) and by URL."""
    try:
        job = await submit(runtime, request, "generate")
        await wait_for(job, ctx.request, runtime)
    except Exception as exc:
        error = from_exception(exc)
        if error is None:
            raise
        # BentoML applies the context's status to whatever the API returns.
        ctx.response.status_code = error.status
        return error.native_response()
    images = [
        GeneratedImage(name=name, url=url, seed=job.spec.seed + index, b64_json=image_b64(runtime, name))
        for index, (name, url) in enumerate(zip(job.images, image_urls(ctx.request, runtime, job)))
    ]
    return GenerateResponse.from_job(job, images=images)
