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

from alice.engine.spec import GenerationSpec, drawn_strength

if TYPE_CHECKING:
    import torch

# A1111's names of the upscalers, as its `parameters` text writes them ("Hires upscaler: Latent").
A1111_UPSCALERS = {"latent": "Latent", "lanczos": "Lanczos"}


def first_pass_output(spec: GenerationSpec) -> str:
    """What the first pass hands the second: its latents, or its decoded images."""
    return "latent" if spec.hires_upscaler == "latent" else "pil"


def upscaled(first: Any, spec: GenerationSpec) -> torch.Tensor | list[Image.Image]:
    """The first pass's output at the final size: latents (a batch tensor) or PIL images."""
    width, height = spec.final_size
    if spec.hires_upscaler == "latent":
        import torch.nn.functional as F

        return F.interpolate(first, size=(height // 8, width // 8), mode="bilinear", antialias=False)
    return [image.resize((width, height), Image.Resampling.LANCZOS) for image in first]


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
