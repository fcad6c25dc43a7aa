"""Admin routes for jobs: list, inspect, cancel."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from alice.http.errors import ApiError
from alice.http.handling import get_runtime
from alice.jobs import Job
from alice.runtime import Runtime

router = APIRouter(prefix="/v1/jobs")


@router.get("")
def list_jobs(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return {"object": "list", "data": [job.public() for job in runtime.jobs.list()]}


@router.get("/{job_id}")
def get_job(job_id: str, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return _found(runtime.jobs.get(job_id), job_id).public()


@router.delete("/{job_id}")
def cancel_job(job_id: str, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Cancels that job only: a queued one at once, a running one at its next step."""
    return _found(runtime.jobs.cancel(job_id), job_id).public()


def _found(job: Job | None, job_id: str) -> Job:
    if job is None:
        raise ApiError(404, f"no job '{job_id}'", param="job_id", code="job_not_found")
    return job
