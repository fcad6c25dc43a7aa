"""Live previews: a cheap picture of the latents while a drawing runs (see generate.py's callback).

The model's own VAE costs about as much as a denoising step; a preview must cost almost
nothing. Two decoders do it:

- a linear map from the latent channels to RGB, no weights: the published factors of the
  family's released VAE, or, for a model with a VAE of its own (the demo's), a map fitted once
  to that VAE by encoding a few blocks of flat colour;
- a tiny autoencoder (diffusers' AutoencoderTiny: TAESD, TAESDXL, TAEF1), when one is handed
  to the pipeline: better pictures at the full size, for a few milliseconds on a GPU.

A family without published factors (FLUX.2's 32 channels in 2x2 patches, Qwen-Image's video
latents) gets no preview: `decoder_for` says None, and the job draws as if none were asked.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch

logger = logging.getLogger("alice.engine")

MAX_PREVIEWS = 10  # per job: the jobs API's and the web page's limit (the Images API's is 3)


@dataclass(frozen=True, eq=False)
class Preview:
    """One picture of a job's first image while it is drawn: `index` counts from 0 per job,
    after denoising step `step` of `total_steps`. At the latents' resolution (1/8 of the image's
    side) from the linear map, at the image's from a tiny autoencoder."""

    image: Image.Image
    index: int
    step: int
    total_steps: int


def preview_steps(previews: int, total: int) -> frozenset[int]:
    """The steps (1-based, of `total`) after which a preview is made: `previews` spread evenly
    before the last step (which the finished image shows), or every step when there are fewer
    steps than previews asked for."""
    if previews <= 0 or total <= 0:
        return frozenset()
    if previews >= total:
        return frozenset(range(1, total + 1))
    # Spaced total / (previews + 1) >= 1 apart: no two round to the same step.
    return frozenset(max(1, round(i * total / (previews + 1))) for i in range(1, previews + 1))


@dataclass(frozen=True)
class LatentFormat:
    """A released VAE's latent space: how the pipeline scales it, and its published map to RGB
    (R, G, B per latent channel, plus a bias; the result in [-1, 1])."""

    scaling_factor: float
    shift_factor: float | None
    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


# The factors ComfyUI publishes in comfy/latent_formats.py (`latent_rgb_factors` and
# `latent_rgb_factors_bias`, github.com/comfyanonymous/ComfyUI, as of commit 040a324), fitted to
# the released VAEs. They apply to the latents the denoiser sees (the VAE's, shifted and scaled),
# which are the latents diffusers' step callback holds.
SD15_FORMAT = LatentFormat(  # SD 1.x; SD 2.x ships the same VAE
    0.18215, None,
    ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
)
SDXL_FORMAT = LatentFormat(
    0.13025, None,
    ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    (0.1084, -0.0175, -0.0011),
)
SD3_FORMAT = LatentFormat(
    1.5305, 0.0609,
    ((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
     (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
     (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
     (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189)),
    (0.2394, 0.2135, 0.1925),
)
FLUX_FORMAT = LatentFormat(  # FLUX.1's VAE, which Chroma and Z-Image draw with too
    0.3611, 0.1159,
    ((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
     (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
     (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
     (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778)),
    (-0.0329, -0.0718, -0.0851),
)
# Family name -> its released VAE's format; a family missing here has no linear preview.
LATENT_FORMATS: dict[str, LatentFormat] = {
    "sd15": SD15_FORMAT, "sd2": SD15_FORMAT, "sdxl": SDXL_FORMAT, "sd3": SD3_FORMAT,
    "flux1-dev": FLUX_FORMAT, "flux1-schnell": FLUX_FORMAT, "chroma": FLUX_FORMAT, "zimage": FLUX_FORMAT,
}


class LinearPreview:
    """Latents (B, C, h, w) -> RGB images of h x w by one matrix product per pixel."""

    def __init__(self, factors: torch.Tensor, bias: torch.Tensor) -> None:
        self.factors, self.bias = factors.float(), bias.float()  # (C, 3), (3,)

    @classmethod
    def of_format(cls, latent_format: LatentFormat) -> LinearPreview:
        import torch

        return cls(torch.tensor(latent_format.factors), torch.tensor(latent_format.bias))

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        import torch

        factors = self.factors.to(latents.device)
        rgb = torch.einsum("bchw,cr->bhwr", latents.float(), factors) + self.bias.to(latents.device)
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(row, "RGB") for row in pixels]


class TinyAutoencoderPreview:
    """Latents -> RGB images at the full size through a tiny autoencoder (AutoencoderTiny)."""

    def __init__(self, tiny: Any) -> None:
        self.tiny = tiny

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        import torch

        config = self.tiny.config
        parameter = next(self.tiny.parameters())
        # The inverse of the pipeline's scaling, as diffusers decodes with a tiny VAE in place of its own.
        scaled = latents.to(parameter.device, parameter.dtype) / config.scaling_factor + config.shift_factor
        rgb = self.tiny.decode(scaled).sample  # [-1, 1]
        pixels = ((rgb.float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)
        return [Image.fromarray(row, "RGB") for row in pixels.permute(0, 2, 3, 1).cpu().numpy()]


PreviewDecoder = LinearPreview | TinyAutoencoderPreview

# A VAE of no released kind (the demo's) gets its map fitted once; kept while the VAE lives.
_FITTED: weakref.WeakKeyDictionary[Any, LinearPreview] = weakref.WeakKeyDictionary()

TINY_AUTOENCODER_ATTRIBUTE = "alice_preview_autoencoder"
"""A loaded AutoencoderTiny set on a pipeline under this name previews it instead of the linear map."""


def decoder_for(pipe: Any, family_name: str) -> PreviewDecoder | None:
    """How to preview this pipeline's latents, or None where its family has no known map."""
    tiny = getattr(pipe, TINY_AUTOENCODER_ATTRIBUTE, None)
    if tiny is not None:
        return TinyAutoencoderPreview(tiny)
    latent_format = LATENT_FORMATS.get(family_name)
    if latent_format is None:
        logger.info("no preview for %s models: no latent-to-RGB factors are known for their VAE", family_name)
        return None
    vae = pipe.vae
    if _released(vae.config, latent_format):
        return LinearPreview.of_format(latent_format)
    if vae not in _FITTED:
        _FITTED[vae] = fit_linear_preview(vae)
        logger.info("preview: fitted a latent-to-RGB map to the %s model's own VAE", family_name)
    return _FITTED[vae]


def _released(config: Any, latent_format: LatentFormat) -> bool:
    """Whether the VAE is scaled as the family's released one (else it is a VAE of its own)."""
    shift = getattr(config, "shift_factor", None) or None
    return (
        config.latent_channels == len(latent_format.factors)
        and abs(config.scaling_factor - latent_format.scaling_factor) < 1e-4
        and (shift is None) == (latent_format.shift_factor is None)
        and (shift is None or abs(shift - latent_format.shift_factor) < 1e-4)
    )


def fit_linear_preview(vae: Any, side: int = 64, cell: int = 16) -> LinearPreview:
    """A least-squares map from this VAE's latents to RGB: the VAE encodes images of random flat
    blocks of colour (fixed seed) and the map is fitted to the colour under each latent. Done
    once per VAE, at its first preview: one encode of four small images."""
    import torch

    generator = torch.Generator("cpu").manual_seed(0)
    blocks = torch.rand(4, 3, side // cell, side // cell, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(blocks, scale_factor=cell, mode="nearest")
    parameter = next(vae.parameters())
    with torch.inference_mode():
        latents = vae.encode(images.to(parameter.device, parameter.dtype)).latent_dist.mean.float().cpu()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = (latents - shift) * vae.config.scaling_factor  # as the denoiser sees them
    target = torch.nn.functional.avg_pool2d(images, side // latents.shape[-1])  # the colour under each latent
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x, y).solution  # (C + 1, 3)
    return LinearPreview(solution[:-1], solution[-1])


def unpacked(pipe: Any, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """FLUX-like pipelines hold their latents packed in 2x2 patches, (B, h/2 * w/2, 4C): back to
    (B, C, h, w) with the pipeline's own unpacking; others are (B, C, h, w) already."""
    if latents.ndim == 3 and hasattr(type(pipe), "_unpack_latents"):
        return type(pipe)._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return latents
