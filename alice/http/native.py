"""`POST /generate`, the typed native API, over the Runtime."""

from __future__ import annotations

import bentoml
from starlette.responses import JSONResponse

from alice.http.errors import from_exception
from alice.http.handling import image_b64, image_urls, result_metadata, submit, wait_for
from alice.protocol.native import GeneratedImage, GenerateRequest, GenerateResponse, Timings
from alice.runtime import Runtime


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
    meta = result_metadata(job)
    urls = image_urls(ctx.request, runtime, job)
    images = [
        GeneratedImage(
            name=name,
            url=url,
            seed=job.spec.seed + index,
            b64_json=image_b64(runtime, name),
        )
        for index, (name, url) in enumerate(zip(job.images, urls))
    ]
    return GenerateResponse(
        job_id=job.id,
        images=images,
        seed=job.spec.seed,
        model=job.model,
        scheduler=job.spec.scheduler,
        steps=job.spec.steps,
        guidance_scale=job.spec.guidance_scale,
        width=job.spec.width,
        height=job.spec.height,
        prompt=job.spec.prompt,
        negative_prompt=job.spec.negative_prompt,
        timings=Timings(**meta["timings"]),
    )
