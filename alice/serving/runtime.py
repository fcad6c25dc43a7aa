"""The running ALICE: settings, stores, pipelines and the job queue, wired together once.

The BentoML service creates one Runtime per worker process; HTTP routes and the
native API call into it. Nothing here knows about HTTP. What runs on the queue's worker
thread is in worker.py, what the server tells about itself in views.py, the retention
sweep in retention.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import socket
from pathlib import Path
from typing import Any

from alice import __version__
from alice.config import Settings
from alice.downloads.manager import DownloadManager
from alice.engine.device import describe_device
from alice.engine.embeddings import EMBEDDING_FILE, embedding_shape, named_in
from alice.engine.engine import DiffusersEngine, Engine
from alice.engine.families import Family, lora_refusal
from alice.engine.heap import freeze_imported_objects
from alice.engine.masks import fill_transparent
from alice.engine.pipelines import MemoryOptions, choose_placement, compile_refusal, host_compiler
from alice.engine.prompt_reading import NamedEmbedding, PromptTooLong, read_prompts
from alice.images.store import ImageStore, keep_input_image
from alice.jobs.job import Job
from alice.jobs.queue import JobQueue
from alice.jobs.sqlite import SqliteJobStore
from alice.metrics import Summary
from alice.models import store as model_store
from alice.protocol.generation import NEEDS_INPUT_IMAGE, GenerationSettings, InvalidRequest
from alice.protocol.input_images import EditInputs, edit_inputs
from alice.serving.readiness import Readiness
from alice.serving.retention import RetentionSweep
from alice.serving.start_phases import StartPhases
from alice.serving.views import StatusViews
from alice.serving.worker import Worker

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
        self.summary = Summary(key_names=frozenset(key.name for key in settings.keyring()))
        self.readiness = Readiness(settings.default_model, self.summary)
        self.pipelines: Engine = engine or self._diffusers_engine()
        # The worker updates the gauges as each batch starts, through the runtime: the views that
        # keep them are built after the queue, which needs the worker first.
        self.worker = Worker(settings, self.pipelines, self.images, self.inputs, self.readiness, self._update_gauges)
        # This server's name among replicas that share a job database; None when it runs alone.
        self.replica = replica_name(settings) if settings.database_url else None
        self.jobs = self._job_queue(settings)
        self.views = StatusViews(settings, self.placement, self.pipelines, self.jobs, self.readiness, self.summary)
        downloads = settings.data_dir / "downloads"
        if self.replica:  # replicas share the data folder; each resumes its own downloads
            downloads = downloads / self.replica
        self.downloads = DownloadManager.for_settings(settings, downloads)
        self.retention = RetentionSweep(settings, self.images, self.inputs, self.jobs)

    def _job_queue(self, settings: Settings) -> JobQueue:
        """The embedded queue (records in SQLite), or with ALICE_DATABASE_URL the queue that
        replicas share in PostgreSQL."""
        hooks = dict(discard_images=self._discard_images, on_finish=self._job_finished,
                     max_images=self.worker.images_per_call, max_per_owner=settings.max_queued_per_key)
        if settings.database_url is None:
            from alice.jobs.local import LocalJobs

            backend = LocalJobs(SqliteJobStore(settings.data_dir / "jobs.sqlite3"))
            return JobQueue(self.worker.execute, max_waiting=settings.queue_size, backend=backend, **hooks)
        from alice.jobs.postgres import PostgresJobStore  # psycopg only where it is used
        from alice.jobs.shared import SharedJobs

        logger.info("jobs: shared queue in PostgreSQL, this replica is %s", self.replica)
        shared = SharedJobs(
            PostgresJobStore(settings.database_url.get_secret_value()), replica=self.replica,
            lease_s=settings.job_lease_s,
        )
        return JobQueue(self.worker.execute, settings.queue_size, backend=shared, **hooks)

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
            quantize=settings.quantize,
        )
        return DiffusersEngine(
            self._locate_model, self.placement, budget, options, on_load=self.readiness.model_loaded,
            on_cheaper_layout=self.summary.laid_out_cheaper, preview_decoder=self._locate_preview_decoder,
        )

    def _locate_model(self, name: str) -> Path:
        return model_store.get_model(name).path

    def _locate_preview_decoder(self, family: str) -> Path | None:
        """The store's tiny autoencoder for a family's previews, read at each model's load: one
        imported later is used from the model's next load."""
        try:
            stored = model_store.preview_decoder_for(family)
        except Exception as exc:  # an unreadable store entry costs the previews' quality, not the model
            logger.warning("cannot look for a preview decoder for %s: %s: %s", family, type(exc).__name__, exc)
            return None
        return stored.path if stored is not None else None

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
        freeze_imported_objects()  # before the worker loads any pipeline
        self.jobs.start(warm_up=lambda: self.worker.warm_up(phases))
        self.downloads.start()
        self.retention.start()
        return self

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking work and let the running job finish, bounded by `timeout`."""
        logger.info("shutting down: finishing the running job, keeping queued ones")
        self.retention.stop()
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
        return self.jobs.run_on_worker(lambda: self.worker.pipeline_for(model.name) and None)

    def unload_model(self, name: str) -> concurrent.futures.Future:
        """Drop a model from memory on the worker, in its turn; it loads again when next asked for.
        ModelNotFound for a name neither in memory nor in the store."""
        if name not in self.pipelines.names():
            self.resolve_model(name)
        return self.jobs.run_on_worker(lambda: self.pipelines.drop(name))

    def submit(self, request: GenerationSettings, source: str, owner: str | None = None) -> Job:
        """Resolve a request into what to draw, check it against the server's limits and
        store, and queue it for `owner` (the key's name) (QueueFull when full)."""
        model = self.resolve_model(request.model)
        edit = self._edit_inputs(request, model)
        if edit is not None and request.outpaint and request.width is None and request.height is None:
            # Outpainting draws the extended canvas, on the family's grid, unless asked otherwise.
            grid = model.family_facts.size_multiple
            width, height = (max(64, round(side / grid) * grid) for side in edit.image.size)
            request = request.model_copy(update={"width": width, "height": height})
        spec = request.to_spec(
            native_size=model.native_size,
            max_pixels=self.settings.max_pixels,
            max_images=self.settings.max_images_per_request,
            text_encoder_layers=model.text_encoder_layers,
            family=model.family_facts,
        )
        try:  # a prompt past what the model reads: refused now, not cut after the queue
            notes = read_prompts(model.path, model.family_facts, spec.prompt, spec.negative_prompt,
                                 _named_embeddings(spec.prompt, spec.negative_prompt))
        except PromptTooLong as exc:
            raise InvalidRequest(exc.field, str(exc)) from None
        spec = dataclasses.replace(spec, prompt_notes=notes)
        for name, _ in spec.loras:  # an unknown LoRA, or one of another family: refused now, not after the queue
            if refusal := lora_refusal(model_store.get_lora(name).family, model.family_facts):
                raise InvalidRequest("loras", f"LoRA '{name}' does not apply to model '{model.name}': {refusal}")
        if edit is not None:
            if edit.mask is None:
                init = edit.image.convert("RGB")
            else:  # what shows through where the image was transparent or extended: its edges, and noise
                init = fill_transparent(edit.image, spec.seed)
                spec = dataclasses.replace(spec, mask_image=keep_input_image(edit.mask, self.inputs))
            spec = dataclasses.replace(spec, init_image=keep_input_image(init, self.inputs))
        job = self.jobs.submit(model.name, spec, source, self.settings.request_timeout_s, previews=request.previews,
                               owner=owner)
        self._update_gauges()
        return job

    def _edit_inputs(self, request: GenerationSettings, model: model_store.StoredModel) -> EditInputs | None:
        """The request's input image and mask, decoded and checked against the model: a masked
        edit needs the family's inpaint pipeline, an unmasked one its img2img pipeline (an
        inpainting checkpoint draws everything with its own pipeline, all masked, as A1111 does)."""
        family: Family = model.family_facts
        if request.input_image is None:
            for name in NEEDS_INPUT_IMAGE:
                if getattr(request, name) is not None:
                    raise InvalidRequest(name, f"{name} applies to an input image: send input_image too")
            return None
        borders = request.outpaint.borders() if request.outpaint else None
        edit = edit_inputs(request.input_image, request.mask, self.images, borders)
        if edit.mask is None and family.image_to_image is None:
            raise InvalidRequest("input_image", f"{family.name} models have no image-to-image pipeline; "
                                                "send a mask to inpaint, or leave input_image out")
        if edit.mask is not None and family.inpaint is None:
            raise InvalidRequest("mask", f"{family.name} models have no inpainting pipeline in diffusers; "
                                         "send an image without a mask or transparent pixels")
        return edit

    # -- what the server tells about itself (views.py) ------------------------------
    @property
    def ready(self) -> bool:
        """Whether the default model is loaded (`/readyz`)."""
        return self.readiness.ready

    def health(self) -> dict[str, Any]:
        return self.views.health()

    def metrics_summary(self, owner: str | None = None) -> dict[str, Any]:
        return self.views.metrics_summary(owner)

    # -- the queue's hooks ----------------------------------------------------------
    def _discard_images(self, names: list[str]) -> None:
        for name in names:
            self.images.delete(name)

    def _job_finished(self, job: Job) -> None:
        for stored in (job.spec.init_image, job.spec.mask_image):
            if stored:
                self.inputs.delete(stored)
        seconds = (job.finished or 0) - (job.started or job.finished or 0)
        self.summary.job_finished(job.state.value, job.error_code, job.model, len(job.images), job.step, seconds,
                                  owner=job.owner)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.views.update_gauges()


def _named_embeddings(*texts: str) -> list[NamedEmbedding]:
    """The stored embeddings the texts name, with what the engine needs to count their vectors."""
    named = []
    for stored in model_store.embeddings():
        if any(named_in(text, stored.name) for text in texts):
            try:
                widths, vectors = embedding_shape(stored.path / EMBEDDING_FILE)
            except OSError:  # deleted since it was listed: the worker will not find it either
                continue
            named.append(NamedEmbedding(stored.name, stored.family, widths, vectors))
    return named


def replica_name(settings: Settings) -> str:
    return settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"
