"""The running ALICE: settings, stores, pipelines and the job queue, wired together once.

The BentoML service creates one Runtime per worker process; HTTP routes and the
native API call into it. Nothing here knows about HTTP.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import re
import socket
import threading
from pathlib import Path
from datetime import timedelta

from PIL import Image

from alice import __version__
from alice.models import store as model_store
from alice.config import Settings
from alice.downloads.manager import DownloadManager
from alice.engine.engine import DiffusersEngine, Engine, OutOfMemory
from alice.engine.generate import BatchEntry, GenerationStopped, images_per_call
from alice.engine.loras import LoraLoadFailed
from alice.engine.device import describe_device
from alice.engine.pipelines import LoadedPipeline, MemoryOptions, choose_placement, compile_refusal, host_compiler
from alice.images.store import ImageStore
from alice.images.inputs import decode_input_image, keep_input_image
from alice.jobs.sqlite import SqliteJobStore
from alice.jobs.queue import FinishUp, Job, JobControl, JobFailure, JobQueue
from alice.metrics import Summary, prometheus_metrics
from alice.protocol.generation import GenerationSettings
from alice.protocol.results import GenerationParameters
from alice.serving.start_phases import StartPhases

logger = logging.getLogger("alice")


class Runtime:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        """`engine` draws the images: by default the diffusers pipelines; tests may hand in
        another (see alice/engine/engine.py)."""
        self.settings = settings
        self.placement = choose_placement(settings.device, settings.dtype)
        self.images = ImageStore(settings.data_dir / "images")
        self.inputs = ImageStore(settings.data_dir / "inputs")  # img2img inputs of queued jobs
        # Replicas share these folders: another one's save in flight is no crash's leftover.
        partial_age_s = 3600 if settings.database_url else 0
        self.inputs.remove_partial_files(partial_age_s)
        removed = self.images.remove_partial_files(partial_age_s)
        if removed:
            logger.warning("removed %d half-written image files left by an earlier run", removed)
        self.summary = Summary()
        self.pipelines: Engine = engine or self._diffusers_engine()
        # This server's name among replicas that share a job database; None when it runs alone.
        self.replica = replica_name(settings) if settings.database_url else None
        self.jobs = self._job_queue(settings)
        downloads = settings.data_dir / "downloads"
        if self.replica:  # replicas share the data folder; each resumes its own downloads
            downloads = downloads / self.replica
        self.downloads = DownloadManager.for_settings(settings, downloads)
        self.ready = False
        self.load_error: str | None = None
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_images, name="alice-retention", daemon=True)

    def _job_queue(self, settings: Settings) -> JobQueue:
        """The embedded queue (records in SQLite), or with ALICE_DATABASE_URL the queue that
        replicas share in PostgreSQL."""
        hooks = dict(discard_images=self._discard_images, on_finish=self._job_finished, max_images=self._images_per_call)
        if settings.database_url is None:
            store = SqliteJobStore(settings.data_dir / "jobs.sqlite3")
            return JobQueue(self._execute, max_waiting=settings.queue_size, store=store, **hooks)
        from alice.jobs.postgres import PostgresJobStore  # psycopg only where it is used
        from alice.jobs.shared import SharedJobQueue

        logger.info("jobs: shared queue in PostgreSQL, this replica is %s", self.replica)
        return SharedJobQueue(
            self._execute, settings.queue_size, store=PostgresJobStore(settings.database_url.get_secret_value()),
            replica=self.replica, lease_s=settings.job_lease_s, **hooks,
        )

    def _diffusers_engine(self) -> DiffusersEngine:
        settings = self.settings
        budget = int(settings.model_cache_gb * 1024**3) or None  # None: what the device holds
        options = MemoryOptions(
            attention_slicing=settings.attention_slicing,
            vae_tiling=settings.vae_tiling,
            cpu_offload=settings.cpu_offload,
            channels_last=settings.channels_last,
            compile_unet=settings.compile_unet,
            max_pixels=settings.max_pixels,
        )
        return DiffusersEngine(self._locate_model, self.placement, budget, options, on_load=self._model_loaded)

    def start(self, phases: StartPhases | None = None) -> Runtime:
        """Start the worker (which loads the default model first) and the retention sweep;
        the load ends the start's `phases`, which are logged then."""
        logger.info(
            "ALICE %s starting on %s (%s)", __version__, describe_device(self.placement.facts), self.placement.dtype
        )
        for preset in self.pipelines.presets().values():
            logger.info("memory preset %s", preset.describe())
        compiler_found = host_compiler(self.placement.is_gpu) is not None
        if self.settings.compile_unet and (refusal := compile_refusal(self.placement.facts, compiler_found=compiler_found)):
            logger.warning("ALICE_COMPILE_UNET is on, but %s: the UNet runs eager", refusal)
        self.jobs.start(warm_up=lambda: self._warm_up(phases))
        self.downloads.start()
        self._sweeper.start()
        return self

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking work and let the running job finish, bounded by `timeout`."""
        logger.info("shutting down: finishing the running job, keeping queued ones")
        self._stopping.set()
        self.downloads.stop()
        self.jobs.stop(timeout)

    # -- requests -----------------------------------------------------------------
    def resolve_model(self, name: str | None) -> model_store.StoredModel:
        """The stored pipeline a request names (or the default); ModelNotFound otherwise."""
        model = model_store.get_model(name or self.settings.default_model)
        if model.kind != model_store.PIPELINE:
            raise model_store.ModelNotFound(model.name)  # a LoRA is no model to draw with
        return model

    def load_model(self, name: str) -> concurrent.futures.Future:
        """Load a stored model into memory on the worker, in its turn after the queued jobs."""
        model = self.resolve_model(name)
        return self.jobs.run_on_worker(lambda: self._pipeline_for(model.name) and None)

    def unload_model(self, name: str) -> concurrent.futures.Future:
        """Drop a model from memory on the worker, in its turn; it loads again when next asked for.
        ModelNotFound for a name neither in memory nor in the store."""
        if name not in self.pipelines.names():
            self.resolve_model(name)
        return self.jobs.run_on_worker(lambda: self.pipelines.drop(name))

    def submit(self, request: GenerationSettings, source: str) -> Job:
        """Resolve a request into what to draw, check it against the server's limits and
        store, and queue it (QueueFull when full)."""
        model = self.resolve_model(request.model)
        spec = request.to_spec(
            native_size=model.native_size,
            max_pixels=self.settings.max_pixels,
            max_images=self.settings.max_images_per_request,
            text_encoder_layers=model.text_encoder_layers,
        )
        for name, _ in spec.loras:
            model_store.get_lora(name)  # refuse an unknown LoRA now, not after the queue
        if request.input_image:
            stored = keep_input_image(decode_input_image(request.input_image, self.images), self.inputs)
            spec = dataclasses.replace(spec, init_image=stored)
        job = self.jobs.submit(model.name, spec, source, self.settings.request_timeout_s)
        self._update_gauges()
        return job

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
            "memory_preset": {family: preset.public() for family, preset in self.pipelines.presets().items()},
        }

    # -- the worker's side --------------------------------------------------------
    def _locate_model(self, name: str):
        return model_store.get_model(name).path

    def _warm_up(self, phases: StartPhases | None) -> None:
        self._load_default_model()
        if phases:
            phases.done("default model")
            logger.info(phases.summary(ready=self.ready))

    def _load_default_model(self) -> None:
        """The warm-up: load the default model. Whatever stops it shows on `/health` (status
        error, and why) and in the log; the server stays up and answers what it can."""
        import torch  # here, not at the top: see alice/engine/__init__.py

        # Each error is logged before `/health` shows it: whoever sees it there (an operator, a
        # test) then finds it in the log too, however slowly the log's handlers write it.
        name = self.settings.default_model
        try:
            self.pipelines.get(name)
        except model_store.ModelNotFound:
            error = (
                f"the default model '{name}' is not in the model store; "
                "run `alice models demo` or set ALICE_DEFAULT_MODEL"
            )
            logger.error(error)
            self.load_error = error
            return
        except torch.OutOfMemoryError:
            error = f"the default model '{name}' does not fit in the GPU's memory"
            logger.exception("%s; not ready", error)
            self.load_error = error
        except Exception as exc:  # a corrupt file, a kernel error, an unsupported card
            error = f"the default model '{name}' failed to load: {short_reason(exc)}"
            logger.exception("%s; not ready", error)
            self.load_error = error
        else:
            self.ready = True
            logger.info("default model %s loaded; ready", name)
            return
        self.pipelines.release_cached_memory()  # out of the except block, whose traceback held the load's tensors

    def _model_loaded(self, name: str, seconds: float) -> None:
        self.summary.model_loaded(name, seconds)
        if name == self.settings.default_model and self.load_error:  # a failed warm-up, fixed since
            self.load_error = None
            self.ready = True
            logger.info("default model %s loaded after all; ready", name)

    def _pipeline_for(self, name: str) -> LoadedPipeline:
        """A model's pipeline, loaded if need be; a load that runs out of memory fails the job
        as `out_of_memory`, as a generation that does (not as an internal error)."""
        import torch

        try:
            return self.pipelines.get(name)
        except model_store.ModelNotFound as exc:  # deleted between submission and run
            raise JobFailure("model_not_found", str(exc)) from None
        except torch.OutOfMemoryError:
            logger.warning("loading model %s ran out of GPU memory", name)
        self.pipelines.recover_from_out_of_memory(name)  # out of the except block, which holds the load's tensors
        raise JobFailure("out_of_memory", f"the GPU ran out of memory loading model '{name}'; try again later")

    def _execute(self, jobs: list[Job], controls: list[JobControl]) -> list[FinishUp | Exception]:
        """Generate a batch of jobs that share their drawing settings (see JobQueue) on the
        worker, as few pipeline calls as the batch limit allows; return per job the saving of
        its images, which the queue runs on its finisher thread while the next batch generates,
        or what ended it alone (cancelled, past its deadline, its input image gone)."""
        self._update_gauges()
        head = jobs[0]
        self._pipeline_for(head.model)  # a load that fails fails the batch, with its reason
        outcomes: list[FinishUp | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        entries: dict[int, BatchEntry] = {}
        for index, (job, control) in enumerate(zip(jobs, controls)):
            try:
                init_image = self._input_image(job.spec.init_image) if job.spec.init_image else None
            except JobFailure as failure:  # this job's alone
                outcomes[index] = failure
                continue
            entries[index] = BatchEntry(job.spec, init_image, control.step, control.should_stop)
        if not entries:
            return outcomes

        def every_job_stops() -> str | None:  # a LoRA's loading is cut short only for nobody
            reasons = [controls[index].should_stop() for index in entries]
            return reasons[0] if all(reasons) else None

        try:
            results = self.pipelines.generate(
                head.model,
                list(entries.values()),
                loras=self._lora_files(head.spec.loras),  # the drawing settings every job of the batch shares
                max_images=self._images_per_call(head),
                should_stop=every_job_stops,
            )
        except GenerationStopped as stop:
            results = [GenerationStopped(controls[index].should_stop() or stop.reason) for index in entries]
        except OutOfMemory:
            raise JobFailure("out_of_memory", "the GPU ran out of memory; try a smaller size or fewer images") from None
        except LoraLoadFailed as exc:
            logger.warning("job %s: %s", head.id, exc, exc_info=True)
            raise JobFailure(
                "lora_failed",
                f"LoRA '{exc.name}' does not load into model '{head.model}' (made for another model family, "
                f"or damaged: {type(exc.__cause__).__name__})",
            ) from None
        for index, result in zip(entries, results):
            if isinstance(result, GenerationStopped):
                outcomes[index] = result
            else:
                controls[index].batched(result.batch)
                outcomes[index] = self._saving(jobs[index], controls[index], result.images)
        return outcomes

    def _images_per_call(self, job: Job) -> int:
        """The batch limit for jobs like this one: ALICE_MAX_BATCH, within the memory kept for
        one image of ALICE_MAX_PIXELS."""
        return images_per_call(job.spec, self.settings.max_batch, self.settings.max_pixels)

    def _saving(self, job: Job, control: JobControl, images: list[Image.Image]) -> FinishUp:
        """The saving of a job's images, with their parameters in A1111's PNG text."""
        parameters = GenerationParameters.of(job.spec)

        def save_images() -> None:  # on the finisher thread, while the next job generates
            for index, image in enumerate(images):
                control.add_image(self.images.save(image, parameters.a1111_text(job.model, index)))

        return save_images

    def _lora_files(self, loras: tuple[tuple[str, float], ...]) -> list[tuple[str, Path, float]]:
        try:
            return [(name, model_store.get_lora(name).path / model_store.LORA_FILE, scale) for name, scale in loras]
        except model_store.ModelNotFound as exc:  # deleted while the job waited
            raise JobFailure("model_not_found", str(exc)) from None

    def _input_image(self, name: str) -> Image.Image:
        path = self.inputs.path_for(name)
        if path is None:
            raise JobFailure("input_missing", "the job's input image is gone")
        with Image.open(path) as image:
            return image.convert("RGB")

    def _discard_images(self, names: list[str]) -> None:
        for name in names:
            self.images.delete(name)

    def _job_finished(self, job: Job) -> None:
        if job.spec.init_image:
            self.inputs.delete(job.spec.init_image)
        seconds = (job.finished or 0) - (job.started or job.finished or 0)
        self.summary.job_finished(job.state.value, job.error_code, job.model, len(job.images), job.step, seconds)
        self._update_gauges()

    def _update_gauges(self) -> None:
        metrics = prometheus_metrics()
        metrics.queue_depth.set(self.jobs.waiting_here)
        metrics.running.set(1 if self.jobs.running else 0)
        if self.placement.is_gpu:
            import torch

            metrics.gpu_memory_bytes.set(torch.cuda.memory_allocated(self.placement.device))

    def metrics_summary(self) -> dict:
        """The JSON summary behind `GET /v1/metrics`."""
        gpu = None
        if self.placement.is_gpu:
            import torch

            device = self.placement.device  # the configured card, not device 0
            free, total = torch.cuda.mem_get_info(device)
            gpu = {"allocated_bytes": torch.cuda.memory_allocated(device), "free_bytes": free, "total_bytes": total}
        running = self.jobs.running
        return {
            **self.summary.snapshot(),
            "queue": {"waiting": self.jobs.waiting, "running": running.public() if running else None},
            "loaded_models": self.pipelines.names(),
            "device": self.placement.device,
            "gpu_memory": gpu,
        }

    def _sweep_images(self) -> None:
        interval = self.settings.retention_sweep_interval_s
        while True:
            try:
                # Replicas share the folders: one of them sweeps per interval.
                if self.jobs.is_my_turn("retention", interval * 0.9):
                    self.images.sweep(
                        max_age=timedelta(days=self.settings.image_retention_days),
                        max_total_bytes=int(self.settings.image_retention_gb * 1024**3),
                    )
                    self.inputs.sweep(max_age=timedelta(days=self.settings.image_retention_days), max_total_bytes=None)
            except Exception:  # a failed sweep must not end the sweeping
                logger.exception("image retention sweep failed")
            if self._stopping.wait(interval):
                return


def replica_name(settings: Settings) -> str:
    return settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for `/health`, which anyone may read: its type and the
    first line of its message, with absolute paths cut to their last two parts (a store's file
    keeps its name, the server's folders stay private). The traceback goes to the log only."""
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {_LEADING_FOLDERS.sub('', lines[0])}" if lines else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


_LEADING_FOLDERS = re.compile(r"(?:/[^/\s'\"]+)+/(?=[^/\s'\"]+/[^/\s'\"]+)")
