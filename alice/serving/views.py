"""What the server tells about itself: `/health`, the `/v1/metrics` summary, and the Prometheus
gauges. Read from memory only, so they answer while a generation runs."""

from __future__ import annotations

from typing import Any

from alice import __version__
from alice.config import Settings
from alice.engine.engine import Engine
from alice.engine.pipelines import DevicePlacement
from alice.jobs.queue import JobQueue
from alice.metrics import Summary, prometheus_metrics
from alice.protocol.results import public_job
from alice.serving.readiness import Readiness


class StatusViews:
    def __init__(
        self, settings: Settings, placement: DevicePlacement, pipelines: Engine, jobs: JobQueue, readiness: Readiness,
        summary: Summary,
    ) -> None:
        self.settings = settings
        self.placement = placement
        self.pipelines = pipelines
        self.jobs = jobs
        self.readiness = readiness
        self.summary = summary

    def health(self) -> dict[str, Any]:
        """Facts for `/health`, from memory only: it must answer while a generation runs."""
        loaded = self.pipelines.names()
        running = self.jobs.running
        readiness = self.readiness
        status = "ok" if readiness.ready else ("error" if readiness.load_error else "loading")
        return {
            "status": status,
            "version": __version__,
            "gpu_available": self.placement.is_gpu,
            "gpuAvailable": self.placement.is_gpu,
            "models_loaded": len(loaded),
            "modelsLoaded": len(loaded),
            "loaded_models": loaded,
            "default_model": self.settings.default_model,
            "device": self.placement.device,
            "dtype": str(self.placement.dtype).removeprefix("torch."),
            "queue": {"waiting": self.jobs.waiting, "running": 1 if running else 0},
            "error": readiness.load_error,
            "memory_preset": {family: preset.public() for family, preset in self.pipelines.presets().items()},
            # Per loaded model, the cheaper layouts it keeps since an image ran out of memory.
            "out_of_memory_layouts": self.pipelines.kept_layouts(),
            "unet_compile": {"enabled": self.settings.compile_unet, "models": self.pipelines.compile_status()},
        }

    def metrics_summary(self, owner: str | None = None) -> dict[str, Any]:
        """The JSON summary behind `GET /v1/metrics`: its job figures `owner`'s only, if named
        (a user key's: the queue's length it sees, but not whose jobs wait or run)."""
        gpu = None
        if self.placement.is_gpu:
            import torch

            device = self.placement.device  # the configured card, not device 0
            free, total = torch.cuda.mem_get_info(device)
            gpu = {"allocated_bytes": torch.cuda.memory_allocated(device), "free_bytes": free, "total_bytes": total}
        running = self.jobs.running
        if running is not None and owner is not None and running.owner != owner:
            running = None
        return {
            **self.summary.snapshot(owner),
            "queue": {"waiting": self.jobs.waiting, "running": public_job(running) if running else None},
            "loaded_models": self.pipelines.names(),
            "device": self.placement.device,
            "gpu_memory": gpu,
        }

    def update_gauges(self) -> None:
        metrics = prometheus_metrics()
        metrics.queue_depth.set(self.jobs.waiting_here)
        metrics.running.set(1 if self.jobs.running else 0)
        if self.placement.is_gpu:
            import torch

            metrics.gpu_memory_bytes.set(torch.cuda.memory_allocated(self.placement.device))
