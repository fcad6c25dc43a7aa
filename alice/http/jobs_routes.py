"""Routes for jobs: submit without waiting, list, poll, cancel; and the metrics summary.

With roles on (ALICE_ADMIN_KEYS), a user key lists, reads and cancels its own jobs only: another
key's job is a 404, as an unknown one, so its existence is not told either. With roles on, a job's
view names its `owner` (the key's name), which an admin needs to tell the keys' jobs apart."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse

from alice.http.auth import current_caller
from alice.http.documented import answer, errors, json_body
from alice.http.errors import ApiError
from alice.http.handling import get_runtime, image_urls, read_json_object, submit
from alice.jobs.queue import Job
from alice.protocol.answers import JobList, JobView
from alice.protocol.native import GenerateRequest
from alice.protocol.previews import preview_view
from alice.protocol.results import public_job
from alice.serving.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["generation"])


def job_view(job: Job, request: Request, runtime: Runtime) -> dict[str, Any]:
    view = {**public_job(job), "image_urls": image_urls(request, runtime, job)}
    if current_caller().roles:  # whose job it is (a key's name; null before roles): only where roles are on,
        view["owner"] = job.owner  # so a server without them answers exactly as before
    return view


@router.post("/jobs", status_code=202, openapi_extra=json_body(GenerateRequest),
             responses={202: answer(JobView, "Queued"), **errors(404, 503)})
async def submit_job(request: Request, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    """Queue a generation (the body is `/generate`'s) and answer at once; poll `GET /v1/jobs/{id}`."""
    job = await submit(runtime, GenerateRequest.model_validate(await read_json_object(request)), "async")
    return JSONResponse(job_view(job, request, runtime), status_code=202,
                        headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/jobs", response_model=None, responses={200: answer(JobList)})
def list_jobs(request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Every job this server remembers (a user key's own), newest first."""
    jobs = runtime.jobs.list(current_caller().owner_filter)
    return {"object": "list", "data": [job_view(job, request, runtime) for job in jobs]}


@router.get("/jobs/{job_id}", response_model=None, responses={200: answer(JobView), **errors(404)})
def get_job(job_id: str, request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    job = _found(runtime.jobs.get(job_id), job_id)
    view = job_view(job, request, runtime)
    if job.previews:  # opt-in: the job asked for `previews`; its newest one so far, or null
        frames = job.preview_frames
        view["preview"] = preview_view(frames[-1], job.spec.width, job.spec.height) if frames else None
    return view


@router.delete("/jobs/{job_id}", response_model=None, responses={200: answer(JobView), **errors(404)})
def cancel_job(job_id: str, request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Cancels that job only: a queued one at once, a running one at its next step."""
    _found(runtime.jobs.get(job_id), job_id)  # another key's job is not this key's to cancel
    return job_view(_found(runtime.jobs.cancel(job_id), job_id), request, runtime)


@router.get("/metrics", tags=["server"])
def metrics(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """A JSON summary for the web page; Prometheus scrapes `/metrics`."""
    return runtime.metrics_summary(current_caller().owner_filter)


def _found(job: Job | None, job_id: str) -> Job:
    if job is None or not current_caller().sees(job.owner):
        raise ApiError(404, f"no job '{job_id}'", param="job_id", code="job_not_found")
    return job
