"""The hires fix (A1111's "Hires. fix"): a text-to-image drawing upscaled and redrawn in part.

The first pass draws at the spec's width x height; its result is upscaled to the final size
(`GenerationSpec.final_size`) and redrawn by the img2img pipeline built from the same loaded
components (`LoadedPipeline.image_to_image`: no second copy of the weights), `hires_strength`
of it, over `hires_steps` (none = steps) as A1111 counts them: int(steps x strength) run, at
least one (spec.drawn_strength).

The upscalers are A1111's of the same names: `latent` upscales the first pass's latents
bilinearly (A1111's "Latent": torch's bilinear, no antialiasing) and hands them to img2img,
which takes 4-channel latents as its `image` (diffusers' SD and SDXL img2img skip the encode);
`lanczos` decodes the first pass, resizes each image with PIL's Lanczos and encodes it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image

from alice.engine.spec import GenerationSpec, drawn_strength, hires_crop_box

if TYPE_CHECKING:
    import torch

# A1111's names of the upscalers, as its `parameters` text writes them ("Hires upscaler: Latent").
A1111_UPSCALERS = {"latent": "Latent", "lanczos": "Lanczos"}


def first_pass_output(spec: GenerationSpec) -> str:
    """What the first pass hands the second: its latents, or its decoded images."""
    return "latent" if spec.hires_upscaler == "latent" else "pil"


def upscaled(first: Any, spec: GenerationSpec) -> torch.Tensor | list[Image.Image]:
    """The first pass's output at the final size: latents (a batch tensor) or PIL images.

    A target of another aspect (hires_width x hires_height) is covered, then its middle kept,
    as A1111 does. A1111 crops the latents in both upscalers; `lanczos` here crops the image on
    the same grid of 8 before img2img encodes it (the VAE then sees no pixels past the edge)."""
    width, height = spec.upscaled_size
    box = hires_crop_box((width, height), spec.final_size)
    whole = box == (0, 0, width // 8, height // 8)
    if spec.hires_upscaler == "latent":
        import torch.nn.functional as F

        latents = F.interpolate(first, size=(height // 8, width // 8), mode="bilinear", antialias=False)
        return latents if whole else latents[:, :, box[1]:box[3], box[0]:box[2]]
    images = [image.resize((width, height), Image.Resampling.LANCZOS) for image in first]
    return images if whole else [image.crop(tuple(8 * side for side in box)) for image in images]


def second_pass_steps(spec: GenerationSpec) -> int:
    """The denoising steps the second pass runs, as diffusers' img2img counts them (for progress)."""
    steps = spec.hires_steps or spec.steps
    return min(int(steps * drawn_strength(steps, spec.hires_strength)), steps)


def second_pass_arguments(spec: GenerationSpec, image: Any, single: bool) -> dict[str, Any]:
    """The img2img call's own arguments (the prompts', guidance and generators are the first pass's)."""
    if isinstance(image, list) and single:
        image = image[0]
    steps = spec.hires_steps or spec.steps
    return {"image": image, "strength": drawn_strength(steps, spec.hires_strength), "num_inference_steps": steps}
