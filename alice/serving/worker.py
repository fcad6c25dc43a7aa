"""What the job queue's worker thread runs: the warm-up that loads the default model, and each
batch of jobs, drawn by the engine and handed back as the saving of their images.

Everything here runs on the one worker thread that owns the GPU (see alice/jobs/queue.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from alice.config import Settings
from alice.engine.compiled_unet import CompiledShapes
from alice.engine.embeddings import EMBEDDING_FILE, named_in
from alice.engine.engine import Engine, NonFiniteOutput, OutOfMemory
from alice.engine.generate import BatchEntry, GenerationStopped
from alice.engine.loras import LoraLoadFailed
from alice.engine.pipelines import LoadedPipeline
from alice.engine.presets import PresetDoesNotFit
from alice.engine.spec import GenerationSpec
from alice.images.store import ImageStore
from alice.jobs.queue import FinishUp, Job, JobControl, JobFailure
from alice.models import store as model_store
from alice.protocol.results import GenerationParameters
from alice.serving.readiness import Readiness
from alice.serving.start_phases import StartPhases

logger = logging.getLogger("alice")


class Worker:
    def __init__(
        self, settings: Settings, pipelines: Engine, images: ImageStore, inputs: ImageStore, readiness: Readiness,
        before_batch: Callable[[], None],
    ) -> None:
        """`before_batch` runs as each batch starts (the runtime's gauges: the job left the queue)."""
        self.settings = settings
        self.pipelines = pipelines
        self.images = images
        self.inputs = inputs
        self.readiness = readiness
        self._before_batch = before_batch

    # -- the warm-up ----------------------------------------------------------------
    def warm_up(self, phases: StartPhases | None) -> None:
        self.load_default_model()
        if phases:
            phases.done("default model and its UNet's compile" if self.settings.compile_unet else "default model")
            logger.info(phases.summary(ready=self.readiness.ready))

    def load_default_model(self) -> None:
        """The warm-up: load the default model, and with ALICE_COMPILE_UNET compile its UNet, so
        `/readyz` waits for both and no request pays for a compile. Whatever stops it shows on
        `/health` (status error, and why) and in the log; the server stays up and answers what
        it can."""
        import torch  # here, not at the top: see alice/engine/__init__.py

        # Each error is logged before `/health` shows it: whoever sees it there (an operator, a
        # test) then finds it in the log too, however slowly the log's handlers write it.
        readiness = self.readiness
        name = self.settings.default_model
        try:
            self.pipelines.get(name)
            self._compile(name)
        except model_store.ModelNotFound:
            error = (
                f"the default model '{name}' is not in the model store; "
                "run `alice models demo` or set ALICE_DEFAULT_MODEL"
            )
            logger.error(error)
            readiness.load_error = error
            return
        except torch.OutOfMemoryError:
            error = f"the default model '{name}' does not fit in the GPU's memory"
            logger.exception("%s; not ready", error)
            readiness.load_error = error
        except Exception as exc:  # a corrupt file, a kernel error, an unsupported card
            error = f"the default model '{name}' failed to load: {short_reason(exc)}"
            logger.exception("%s; not ready", error)
            readiness.load_error = error
        else:
            readiness.ready = True
            logger.info("default model %s loaded; ready", name)
            return
        self.pipelines.release_cached_memory()  # out of the except block, whose traceback held the load's tensors

    def _compile(self, name: str) -> None:
        if self.settings.compile_unet:
            self.pipelines.warm_up(name, lambda: self.compiled_shapes(name))

    def compiled_shapes(self, name: str) -> CompiledShapes:
        """What a compiled UNet is compiled for: its model's native size (a request's size when
        it names none), at every batch the batching rule gives that size."""
        side = model_store.get_model(name).native_size
        spec = GenerationSpec(prompt="", width=side, height=side, seed=0)
        return CompiledShapes(side, side, self.batch_limit(name, spec))

    # -- jobs -----------------------------------------------------------------------
    def pipeline_for(self, name: str) -> LoadedPipeline:
        """A model's pipeline, loaded if need be; a load that runs out of memory fails the job
        as `out_of_memory`, as a generation that does (not as an internal error)."""
        import torch

        try:
            loaded = self.pipelines.get(name)
            self._compile(name)  # a model loaded for a request compiles now, not in its first call
            return loaded
        except model_store.ModelNotFound as exc:  # deleted between submission and run
            raise JobFailure("model_not_found", str(exc)) from None
        except PresetDoesNotFit as exc:  # refused before any weight was read; says what would fit
            raise JobFailure("model_does_not_fit", str(exc)) from None
        except torch.OutOfMemoryError:
            logger.warning("loading model %s ran out of GPU memory", name)
        self.pipelines.recover_from_out_of_memory(name)  # out of the except block, which holds the load's tensors
        raise JobFailure("out_of_memory", f"the GPU ran out of memory loading model '{name}'; try again later")

    def execute(self, jobs: list[Job], controls: list[JobControl]) -> list[FinishUp | Exception]:
        """Generate a batch of jobs that share their drawing settings (see JobQueue) on the
        worker, as few pipeline calls as the batch limit allows; return per job the saving of
        its images, which the queue runs on its finisher thread while the next batch generates,
        or what ended it alone (cancelled, past its deadline, its input image gone)."""
        self._before_batch()
        head = jobs[0]
        self.pipeline_for(head.model)  # a load that fails fails the batch, with its reason
        outcomes: list[FinishUp | Exception] = [None] * len(jobs)  # type: ignore[list-item]
        entries: dict[int, BatchEntry] = {}
        for index, (job, control) in enumerate(zip(jobs, controls)):
            try:
                init_image = self._input_image(job.spec.init_image) if job.spec.init_image else None
                mask = self._input_image(job.spec.mask_image, "L") if job.spec.mask_image else None
            except JobFailure as failure:  # this job's alone
                outcomes[index] = failure
                continue
            entries[index] = BatchEntry(job.spec, init_image, control.step, control.should_stop, mask,
                                        previews=job.previews, on_preview=control.preview)
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
                max_images=self.images_per_call(head),
                should_stop=every_job_stops,
                embeddings=self._embedding_files([job.spec for job in jobs]),
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
            elif isinstance(result, NonFiniteOutput):  # never a black image with a 200; this job's alone
                logger.error("job %s: model %s: %s", jobs[index].id, head.model, result)
                outcomes[index] = JobFailure("nan_output", f"model '{head.model}' produced no image: {result}")
            else:
                controls[index].batched(result.batch)
                outcomes[index] = self._saving(jobs[index], controls[index], result.images)
        return outcomes

    def images_per_call(self, job: Job) -> int:
        """The batch limit for jobs like this one (see `batch_limit`)."""
        return self.batch_limit(job.model, job.spec)

    def batch_limit(self, model: str, spec: GenerationSpec) -> int:
        """The images one pipeline call may draw for `spec` (a job's, or the compiled shapes'):
        ALICE_MAX_BATCH, within the memory the engine keeps for drawing. A model that is gone or
        does not load: 1, and its job fails with the reason when it runs (this runs as the queue
        picks a batch: it must not raise)."""
        try:
            return self.pipelines.images_per_call(model, spec, self.settings.max_batch)
        except Exception:
            logger.debug("no batch limit for model %s; drawing one image per call", model, exc_info=True)
            return 1

    def _saving(self, job: Job, control: JobControl, images: list[Image.Image]) -> FinishUp:
        """The saving of a job's images in the format it asked for, with their parameters in
        A1111's text (a PNG's text chunk, a JPEG's or WebP's EXIF)."""
        parameters = GenerationParameters.of(job.spec)
        spec = job.spec

        def save_images() -> None:  # on the finisher thread, while the next job generates
            for index, image in enumerate(images):
                text = parameters.a1111_text(job.model, index)
                control.add_image(self.images.save(image, text, spec.output_format, spec.output_compression,
                                                   owner=job.owner))

        return save_images

    def _lora_files(self, loras: tuple[tuple[str, float], ...]) -> list[tuple[str, Path, float]]:
        try:
            return [(name, model_store.get_lora(name).path / model_store.LORA_FILE, scale) for name, scale in loras]
        except model_store.ModelNotFound as exc:  # deleted while the job waited
            raise JobFailure("model_not_found", str(exc)) from None

    def _embedding_files(self, specs: list) -> list[tuple[str, Path]]:
        """The stored embeddings the batch's prompts name (the engine loads those that fit the model)."""
        texts = [text for spec in specs for text in (spec.prompt, spec.negative_prompt)]
        return [(m.name, m.path / EMBEDDING_FILE) for m in model_store.embeddings()
                if any(named_in(text, m.name) for text in texts)]

    def _input_image(self, name: str, mode: str = "RGB") -> Image.Image:
        path = self.inputs.path_for(name)
        if path is None:
            raise JobFailure("input_missing", "the job's input image is gone")
        with Image.open(path) as image:
            return image.convert(mode)


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line for `/health`, which anyone may read: its type and the
    first line of its message, with absolute paths cut to their last two parts (a store's file
    keeps its name, the server's folders stay private). The traceback goes to the log only."""
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {_LEADING_FOLDERS.sub('', lines[0])}" if lines else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


_LEADING_FOLDERS = re.compile(r"(?:/[^/\s'\"]+)+/(?=[^/\s'\"]+/[^/\s'\"]+)")
