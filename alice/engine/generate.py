"""Text-to-image (and image-to-image) runs on a loaded pipeline, with progress and cancellation.

Jobs that ask for the same drawing settings share one pipeline call (a batch): the UNet does
far more images per second at batch 4-8 than at batch 1. Each image keeps its own seed, for its
starting noise and for any noise its sampler draws, so it matches the image the same request
draws alone: bit for bit when it is alone in its call, and to the last bits of the arithmetic
(PSNR of 40 dB or more, tests/unit/test_batching.py) when it shares one.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from PIL import Image

from alice.engine.embeddings import spell_embeddings
from alice.engine.families import Family, family_of_pipeline
from alice.engine.finite import NonFiniteOutput, finite_decode
from alice.engine.hires import first_pass_output, second_pass_arguments, second_pass_steps, upscaled
from alice.engine.masks import blend_back, takes_the_mask, whole_redraw
from alice.engine.previews import Preview, PreviewDecoder, decoder_for, preview_steps, unpacked
from alice.engine.prompt_embeds import encode_prompts, needs_own_encoding
from alice.engine.prompt_tags import extract_prompt_loras
from alice.engine.prompt_weights import has_weight_syntax, plain_text
from alice.engine.schedulers import build_scheduler
from alice.engine.spec import GenerationSpec, batch_key, drawn_strength  # noqa: F401  (batch_key: the jobs' import)


if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    from diffusers import DiffusionPipeline

StepCallback = Callable[[int, int], None]
"""Called after every denoising step with (steps done, total steps)."""

StopCheck = Callable[[], "str | None"]
"""Asked after every step; a non-empty reason stops the run at that step."""

PreviewCallback = Callable[[Preview], None]
"""Handed each live preview of the entry's first image (alice/engine/previews.py)."""


@contextlib.contextmanager
def _clip_layers_reachable(pipe: DiffusionPipeline) -> Iterator[None]:
    """With clip_skip set, diffusers' encode_prompt reads `text_encoder.text_model.final_layer_norm`,
    but transformers 5.6 flattened CLIPTextModel (transformers#46285): it is its own text model
    now (diffusers#14124, open). For the call, this pipeline's encoder names itself `text_model`:
    in its own __dict__, not as a registered submodule (no cycle in its state dict), and not on
    the class, where it misled diffusers' single-file conversion of every later model in the
    process into leaving the text encoder's weights unloaded."""
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is None or hasattr(encoder, "text_model"):
        yield
        return
    object.__setattr__(encoder, "text_model", encoder)
    try:
        yield
    finally:
        vars(encoder).pop("text_model", None)


@dataclass(frozen=True)
class GenerationOutput:
    images: list[Image.Image]
    seconds: float
    batch: int = 1  # images drawn together in the largest pipeline call that drew these


class GenerationStopped(Exception):
    """The run was stopped between steps (cancelled or past its deadline)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BatchEntry:
    """One request's share of a batch: what to draw, its input image (and the mask of what to
    redraw of it: "L", 255 = redraw), its own progress and stop callbacks, and how many live
    previews of its first image to hand `on_preview`."""

    spec: GenerationSpec
    init_image: Image.Image | None = None
    on_step: StepCallback | None = None
    should_stop: StopCheck | None = None
    mask: Image.Image | None = None
    previews: int = 0
    on_preview: PreviewCallback | None = None


def images_per_call(spec: GenerationSpec, max_batch: int, max_pixels: int) -> int:
    """How many images of this size one pipeline call may draw by their pixels: at most
    `max_batch`, and no more pixels together than one image of `max_pixels`.

    The rule where no estimate of the batch's memory is made (the CPU, the transformer
    families): the UNet's or transformer's working memory grows with the pixels of the whole
    batch, so n images of p pixels take about what one of n x p does; the VAE decodes a batch
    one image at a time (see `_draw`). On a GPU the UNet families' batches are sized by their
    estimated working memory instead (PipelineCache.images_per_call).
    """
    width, height = spec.final_size  # a hires fix's second pass is the larger
    return max(1, min(max_batch, max_pixels // (width * height)))


def run_generation(
    pipe: DiffusionPipeline,
    base_scheduler_config: Any,
    spec: GenerationSpec,
    *,
    init_image: Image.Image | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    family: Family | None = None,
    mask: Image.Image | None = None,
) -> GenerationOutput:
    """Draw `spec.num_images` images one pipeline call each (image i from seed `spec.seed + i`);
    GenerationStopped when `should_stop` gives a reason. See `run_batch`."""
    [result] = run_batch(
        pipe, base_scheduler_config, [BatchEntry(spec, init_image, on_step, should_stop, mask)], family=family
    )
    if isinstance(result, (GenerationStopped, NonFiniteOutput)):
        raise result
    return result


Row = tuple[int, int]  # (index of the entry, seed of one of its images)


def run_batch(
    pipe: DiffusionPipeline,
    base_scheduler_config: Any,
    entries: Sequence[BatchEntry],
    *,
    max_images: int = 1,
    on_out_of_memory: Callable[[], None] | None = None,
    lay_out_cheaper: Callable[[], bool] | None = None,
    family: Family | None = None,
    hires_pipe: DiffusionPipeline | None = None,
) -> list[GenerationOutput | GenerationStopped | NonFiniteOutput]:
    """Draw every entry's images (image i of an entry from seed `spec.seed + i`), `max_images`
    to a pipeline call, in order; the entries must share a `batch_key`. Returns, per entry, its
    images or why it stopped.

    An entry whose `should_stop` gives a reason leaves the batch: its rows of the running call
    are still computed (the call's shape stays), but it gets no image and joins no later call;
    when every entry of a call has stopped, the call ends at that step. A call that runs out of
    memory is split in halves, each tried once (after `on_out_of_memory`, which frees what the
    failed call held); torch.OutOfMemoryError when a half fails too, or a single image does.
    A single image that fails is drawn once more when `lay_out_cheaper` (called after
    `on_out_of_memory`) laid the pipeline out cheaper in place and says so; once per run.

    An entry with an image whose latents or decode came out NaN gets finite.NonFiniteOutput
    instead of images (a VAE that overflows is retried in float32 first: alice/engine/finite.py);
    the other entries of its call keep theirs.

    `family` says which arguments the pipeline takes (by default the family of its class).
    `hires_pipe`: the img2img pipeline over the same components, which draws a hires fix's second
    pass (alice/engine/hires.py); progress counts both passes' steps.
    The caller must own the pipeline for the duration (ALICE runs one generation at a time):
    the scheduler is replaced for every call.
    """
    import torch

    family = family or family_of_pipeline(type(pipe).__name__)
    started = time.perf_counter()
    rows: list[Row] = [(index, e.spec.seed + i) for index, e in enumerate(entries) for i in range(e.spec.num_images)]
    pending: deque[tuple[list[Row], bool]] = deque(  # (rows, may still be split on out-of-memory)
        (rows[i : i + max_images], True) for i in range(0, len(rows), max_images)
    )
    progress = _Progress(entries, [call for call, _ in pending])
    images: list[list[Image.Image]] = [[] for _ in entries]
    failed: dict[int, NonFiniteOutput] = {}  # entries with an image that came out NaN
    largest = [0] * len(entries)
    may_lay_out = lay_out_cheaper is not None
    while pending:
        call, may_split = pending.popleft()
        progress.ask_to_stop(dict.fromkeys(index for index, _ in call))
        call = [row for row in call if row[0] not in progress.stopped and row[0] not in failed]
        if not call:
            continue
        out_of_memory = False
        try:
            drawn, steps = _draw(pipe, base_scheduler_config, entries, call, progress, family, hires_pipe)
        except NonFiniteOutput as every_row:  # this call's entries fail; the batch's other calls still draw
            for index, _ in call:
                failed.setdefault(index, every_row)
            continue
        except torch.OutOfMemoryError:
            if not (len(call) == 1 and may_lay_out) and (not may_split or len(call) == 1):
                raise
            out_of_memory = True
        if out_of_memory:  # out of the except block, whose traceback holds the failed call's tensors
            if on_out_of_memory:
                on_out_of_memory()
            if len(call) == 1:  # one image does not fit this layout: once, a cheaper one
                may_lay_out = False
                if not lay_out_cheaper():  # type: ignore[misc]
                    raise torch.OutOfMemoryError("out of memory drawing one image, in the cheapest layout allowed")
                pending.appendleft((call, False))
                continue
            halves = [call[: len(call) // 2], call[len(call) // 2 :]]
            progress.split(halves)
            pending.extendleft([(halves[1], False), (halves[0], False)])
            continue
        for (index, _), image in zip(call, drawn):
            if isinstance(image, NonFiniteOutput):
                failed.setdefault(index, image)  # an entry is all its images or none
            elif index not in progress.stopped:
                images[index].append(image)
                largest[index] = max(largest[index], len(call))
        progress.call_done(call, steps)
    seconds = time.perf_counter() - started
    return [
        GenerationStopped(progress.stopped[index]) if index in progress.stopped
        else failed[index] if index in failed
        else GenerationOutput(images=images[index], seconds=seconds, batch=largest[index])
        for index in range(len(entries))
    ]


class _Progress:
    """Each entry's steps across the calls that draw its images, and which entries stopped."""

    def __init__(self, entries: Sequence[BatchEntry], calls: list[list[Row]]) -> None:
        self.entries = entries
        self.calls = Counter(index for call in calls for index in {i for i, _ in call})
        self.done = [0] * len(entries)  # steps of the calls already finished
        self.stopped: dict[int, str] = {}

    def ask_to_stop(self, indices: Sequence[int]) -> None:
        for index in indices:
            check = self.entries[index].should_stop
            if index not in self.stopped and check and (reason := check()):
                self.stopped[index] = reason

    def step(self, indices: Sequence[int], step: int, total: int) -> None:
        for index in indices:
            if index not in self.stopped and (on_step := self.entries[index].on_step):
                on_step(self.done[index] + step + 1, total * self.calls[index])
        self.ask_to_stop(indices)

    def split(self, halves: list[list[Row]]) -> None:
        for index in {i for i, _ in halves[0]} & {i for i, _ in halves[1]}:
            self.calls[index] += 1

    def call_done(self, call: list[Row], steps: int) -> None:
        for index in {i for i, _ in call}:
            self.done[index] += steps


def _draw(
    pipe: DiffusionPipeline, base_scheduler_config: Any, entries: Sequence[BatchEntry], call: list[Row],
    progress: _Progress, family: Family, hires_pipe: DiffusionPipeline | None = None,
) -> tuple[list[Image.Image | NonFiniteOutput], int]:
    """One pipeline call for `call`'s rows (two with a hires fix): their images, in order (or
    why a row came out NaN while others did not), and the denoising steps run. NonFiniteOutput
    when every row did."""
    import torch

    indices = list(dict.fromkeys(index for index, _ in call))
    seeds = [seed for _, seed in call]
    spec = entries[call[0][0]].spec  # the drawing settings all entries share
    # Alone, exactly the arguments of an unbatched run (a list of one would differ in no bit,
    # but this keeps it obvious). In a batch, one generator per image for its starting noise
    # and the noise ancestral samplers draw (diffusers hands a list to scheduler.step), and
    # one Brownian tree per image for DPM++ SDE.
    single = len(call) == 1
    pipe.scheduler = build_scheduler(spec.scheduler, base_scheduler_config, seeds[0] if single else seeds)
    # A CPU generator gives the same starting noise on every device for a given seed.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    # CLIP never sees LoRA tags; an embedding's name is spelled as its token (alice/engine/embeddings.py).
    prompts = [spell_embeddings(pipe, extract_prompt_loras(entries[index].spec.prompt)[0]) for index, _ in call]
    negatives = [spell_embeddings(pipe, entries[index].spec.negative_prompt) for index, _ in call]
    image_args: dict[str, Any] = {"width": spec.width, "height": spec.height}
    init_images = [entries[index].init_image for index, _ in call]
    masks = [entries[index].mask for index, _ in call]
    size = (spec.width, spec.height)
    inputs: list[Image.Image] = []
    if init_images[0] is not None:
        # img2img pipelines take their size from the input image.
        inputs = [image.convert("RGB").resize(size, Image.Resampling.LANCZOS) for image in init_images]
        image_args = {"image": inputs[0] if single else inputs, "strength": drawn_strength(spec.steps, spec.strength)}
    if masks[0] is not None:
        # Inpaint pipelines take the mask (white = redraw) and the size, which they round to 8.
        resized = [mask.convert("L").resize(size, Image.Resampling.NEAREST) for mask in masks]
        image_args.update(mask_image=resized[0] if single else resized, width=spec.width, height=spec.height)
    # An inpainting checkpoint drawing text to image (and its hires fix), or an edit without a mask,
    # redraws everything, as A1111 does: an edit from the input's latents at the request's strength.
    redraws_all = masks[0] is None and takes_the_mask(pipe)
    if redraws_all:
        image_args = {**whole_redraw(size, len(call), single, image=image_args.get("image")),
                      "strength": image_args.get("strength", 1.0)}
    if not single and hasattr(pipe.vae, "enable_slicing"):
        # One image's decode at a time: a batch needs no more decoder memory than one image
        # (see images_per_call); alone, diffusers' slicing changes nothing.
        pipe.vae.enable_slicing()

    previewing = _Previews(pipe, family, spec, entries, call)
    hires = spec.hires_scale is not None
    later_steps = second_pass_steps(spec) if hires else 0  # counted in the first pass's total
    passed = 0  # the steps of the passes already run

    def step_end(pipeline: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        total = pipeline.num_timesteps + (later_steps if passed == 0 else passed)
        if previewing.rows and passed == 0:  # nothing at all when no entry asked; the first pass's latents only
            previewing.step(step + 1, pipeline.num_timesteps, kwargs["latents"], progress.stopped)
        progress.step(indices, passed + step, total)
        if all(index in progress.stopped for index in indices):
            # Skips the remaining steps; the pipeline still decodes, and the result is dropped.
            pipeline._interrupt = True
        return kwargs

    clip_layers = _clip_layers_reachable(pipe) if spec.clip_skip else contextlib.nullcontext()
    # finite_decode: NonFiniteOutput rather than a black image (alice/engine/finite.py).
    with torch.inference_mode(), clip_layers, finite_decode(pipe) as failed:
        text_args = prompt_arguments(pipe, family, spec, prompts, negatives)
        result = pipe(
            **text_args,
            **image_args,
            num_inference_steps=spec.steps,
            generator=generators[0] if single else generators,
            callback_on_step_end=step_end,
            output_type=first_pass_output(spec) if hires else "pil",
        )
        passed = pipe.num_timesteps
        if hires and not all(index in progress.stopped for index in indices):
            assert hires_pipe is not None, "a hires fix needs the img2img pipeline"
            # The second pass: its own scheduler and generators from the same seeds, as a run of
            # its own would have (A1111 draws the second pass's noise from the seeds too).
            hires_pipe.scheduler = build_scheduler(spec.scheduler, base_scheduler_config, seeds[0] if single else seeds)
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
            second = second_pass_arguments(spec, upscaled(result.images, spec), single)
            if redraws_all:
                second.update(whole_redraw(spec.final_size, len(call), single, image=second["image"]))
                if isinstance(second["image"], torch.Tensor):
                    # Latents: diffusers masks an image's pixels, so the masked image is given, as
                    # its pixel path makes it (the image x 0: grey), and encoded by the pipeline.
                    second["masked_image_latents"] = torch.zeros(len(call), 3, *reversed(spec.final_size))
            result = hires_pipe(
                **text_args,
                **second,
                generator=generators[0] if single else generators,
                callback_on_step_end=step_end,
                output_type="pil",
            )
            passed += hires_pipe.num_timesteps
    drawn: list[Image.Image] = result.images
    if masks[0] is not None:  # the kept area is the client's: the original, not its VAE round trip
        drawn = [blend_back(kept, image, mask) for kept, image, mask in zip(inputs, drawn, masks)]
    # An image that came out NaN was decoded from zeros: its row gets why, never those pixels.
    return [failed.get(row, image) for row, image in enumerate(drawn)], passed


def prompt_arguments(
    pipe: DiffusionPipeline, family: Family, spec: GenerationSpec, prompts: list[str], negatives: list[str]
) -> dict[str, Any]:
    """The call's prompts as the pipeline takes them, with the family's guidance arguments.

    On the CLIP-conditioned UNet families, prompts with A1111 weight syntax or longer than the
    encoder reads are encoded here, weighted and chunked (alice/engine/prompt_embeds.py); the
    others go to diffusers as text, as before. The transformer families read the words without
    the syntax (their results say so: alice/engine/prompt_reading.py)."""
    single = len(prompts) == 1
    args = family_arguments(family, spec, negatives if not single else negatives[0])
    if family.is_unet and needs_own_encoding(pipe, [*prompts, *negatives]):
        args.pop("negative_prompt", None)
        clip_skip = args.pop("clip_skip", None)
        zero_empty = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        return {**args, **encode_prompts(pipe, prompts, negatives, clip_skip, zero_empty)}
    if not family.is_unet:
        prompts = [plain_text(p) if has_weight_syntax(p) else p for p in prompts]
        if isinstance(negative := args.get("negative_prompt"), str) and has_weight_syntax(negative):
            args["negative_prompt"] = plain_text(negative)
        elif isinstance(negative, list):
            args["negative_prompt"] = [plain_text(n) if has_weight_syntax(n) else n for n in negative]
    return {"prompt": prompts[0] if single else prompts, **args}


class _Previews:
    """The live previews of one pipeline call: for each entry that asked for them and whose first
    image this call draws, its row of the latents pictured after its chosen steps."""

    def __init__(
        self, pipe: DiffusionPipeline, family: Family, spec: GenerationSpec, entries: Sequence[BatchEntry],
        call: list[Row],
    ) -> None:
        self.pipe, self.spec, self.entries = pipe, spec, entries
        # Entry index -> its first image's row in the call.
        self.rows = {
            index: call.index((index, entries[index].spec.seed)) for index, entry in enumerate(entries)
            if entry.previews > 0 and entry.on_preview and (index, entry.spec.seed) in call
        }
        self.decoder: PreviewDecoder | None = decoder_for(pipe, family.name) if self.rows else None
        if self.decoder is None:
            self.rows = {}
        self.shown = dict.fromkeys(self.rows, 0)

    def step(self, done: int, total: int, latents: Any, stopped: dict[int, str]) -> None:
        due = [index for index in self.rows
               if index not in stopped and done in preview_steps(self.entries[index].previews, total)]
        if not due or self.decoder is None:
            return
        latents = unpacked(self.pipe, latents, self.spec.width, self.spec.height)
        pictures = self.decoder.images(latents[[self.rows[index] for index in due]])
        for index, picture in zip(due, pictures):
            on_preview = self.entries[index].on_preview
            assert on_preview is not None
            on_preview(Preview(picture, self.shown[index], done, total))
            self.shown[index] += 1


def family_arguments(family: Family, spec: GenerationSpec, negative: str | list[str]) -> dict[str, Any]:
    """The pipeline arguments that differ between families: guidance, negative prompt, clip skip.
    The protocol has already refused what a family does not take (a negative prompt for FLUX,
    clip_skip for a transformer), so what is left out here was never asked for."""
    args: dict[str, Any] = {}
    if family.guidance == "true-cfg":
        # Qwen-Image: `guidance_scale` does nothing; true CFG runs when `true_cfg_scale` > 1 and a
        # negative prompt is given, so an empty one is the blank its docs use.
        args["true_cfg_scale"] = spec.guidance_scale
        blank = [text or " " for text in negative] if isinstance(negative, list) else negative or " "
        args["negative_prompt"] = blank
    else:
        args["guidance_scale"] = spec.guidance_scale
        if family.negative_prompt:
            args["negative_prompt"] = negative if isinstance(negative, list) else negative or None
    if family.clip_skip:
        args["clip_skip"] = spec.clip_skip - 1 if spec.clip_skip else None  # diffusers counts the layers skipped
    return args
