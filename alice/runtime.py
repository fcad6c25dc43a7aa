"""The running ALICE: settings, stores, pipelines and the job queue, wired together once.

The BentoML service creates one Runtime per worker process; HTTP routes and the
native API call into it. Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import secrets
import threading
from datetime import timedelta

import torch

from alice import __version__, model_store
from alice.config import Settings
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import PipelineCache, choose_placement
from alice.engine.schedulers import a1111_sampler_name
from alice.image_store import ImageStore, a1111_parameters
from alice.jobs import Job, JobFailure, JobQueue
from alice.protocol.generation import MAX_SEED, GenerationSettings

logger = logging.getLogger("alice")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.placement = choose_placement(settings.device, settings.dtype)
        self.images = ImageStore(settings.data_dir / "images")
        removed = self.images.remove_partial_files()
        if removed:
            logger.warning("removed %d half-written image files left by an earlier run", removed)
        self.pipelines = PipelineCache(self._locate_model, self.placement)
        self.jobs = JobQueue(self._execute, max_waiting=settings.queue_size)
        self.ready = False
        self.load_error: str | None = None
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_images, name="alice-retention", daemon=True)

    def start(self) -> Runtime:
        """Start the worker (which loads the default model first) and the retention sweep."""
        logger.info("ALICE %s starting on %s (%s)", __version__, self.placement.device, self.placement.dtype)
        self.jobs.start(warm_up=self._load_default_model)
        self._sweeper.start()
        return self

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking work and let the running job finish, bounded by `timeout`."""
        logger.info("shutting down: finishing the running job, keeping queued ones")
        self._stopping.set()
        self.jobs.stop(timeout)

    # -- requests -----------------------------------------------------------------
    def resolve_model(self, name: str | None) -> model_store.StoredModel:
        """The stored model a request names (or the default); ModelNotFound otherwise."""
        return model_store.get_model(name or self.settings.default_model)

    def submit(self, request: GenerationSettings, source: str) -> Job:
        """Check a request against the server's limits and queue it (QueueFull when full)."""
        request.check_limits(
            max_pixels=self.settings.max_pixels, max_images=self.settings.max_images_per_request
        )
        model = self.resolve_model(request.model)
        spec = GenerationSpec(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1 - 16),
            scheduler=request.scheduler,
            num_images=request.num_images,
        )
        return self.jobs.submit(model.name, spec, source, self.settings.request_timeout_s)

    def health(self) -> dict:
        """Facts for `/health`, from memory only: it must answer while a generation runs."""
        loaded = self.pipelines.names()
        running = self.jobs.running
        status = "ok" if self.ready else ("error" if self.load_error else "loading")
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
            "error": self.load_error,
        }

    # -- the worker's side --------------------------------------------------------
    def _locate_model(self, name: str):
        return model_store.get_model(name).path

    def _load_default_model(self) -> None:
        name = self.settings.default_model
        try:
            self.pipelines.get(name)
        except model_store.ModelNotFound:
            self.load_error = (
                f"the default model '{name}' is not in the model store; "
                "run `alice models demo` or set ALICE_DEFAULT_MODEL"
            )
            logger.error(self.load_error)
            return
        self.ready = True
        logger.info("default model %s loaded; ready", name)

    def _execute(self, job: Job, on_step, should_stop) -> list[str]:
        try:
            loaded = self.pipelines.get(job.model)
        except model_store.ModelNotFound as exc:  # deleted between submission and run
            raise JobFailure("model_not_found", str(exc)) from None
        try:
            output = run_generation(
                loaded.pipe, loaded.base_scheduler_config, job.spec, on_step=on_step, should_stop=should_stop
            )
        except torch.OutOfMemoryError:
            self.pipelines.release_cached_memory()
            raise JobFailure(
                "out_of_memory",
                "the GPU ran out of memory; try a smaller size or fewer images, or enable attention slicing",
            ) from None
        spec = job.spec
        return [
            self.images.save(
                image,
                a1111_parameters(
                    prompt=spec.prompt,
                    negative_prompt=spec.negative_prompt,
                    steps=spec.steps,
                    sampler=a1111_sampler_name(spec.scheduler),
                    guidance_scale=spec.guidance_scale,
                    seed=spec.seed + index,
                    width=spec.width,
                    height=spec.height,
                    model=job.model,
                ),
            )
            for index, image in enumerate(output.images)
        ]

    def _sweep_images(self) -> None:
        while True:
            try:
                self.images.sweep(
                    max_age=timedelta(days=self.settings.image_retention_days),
                    max_total_bytes=int(self.settings.image_retention_gb * 1024**3),
                )
            except Exception:  # a failed sweep must not end the sweeping
                logger.exception("image retention sweep failed")
            if self._stopping.wait(self.settings.retention_sweep_interval_s):
                return
