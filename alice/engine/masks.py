"""Inpainting masks as pixels (torch-free): where an image is redrawn, how the area to redraw is
filled before drawing, and how the original comes back outside it.

A mask here is a Pillow "L" image the size of its image: 255 where the image is redrawn, 0
where it is kept. Clients say it the OpenAI way (a PNG whose fully transparent pixels are the
area to redraw); `mask_from_alpha` turns that into this form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from alice.engine.pipeline_configs import INPAINTING_UNET_CHANNELS

# The soft edge of the blend-back, in pixels of the drawn image: the drawn pixels fade into the
# original over this distance inside the masked area (A1111's default "mask blur" is 4 too).
# Inside, not across the edge: every pixel the client marked as kept stays the original's.
FEATHER_PX = 4
# The noise over the edge-extended fill of transparent or new (outpainted) pixels: enough that
# the sampler does not settle on a flat smear, little enough that the colours still lead.
FILL_NOISE = 24.0


def has_alpha(image: Image.Image) -> bool:
    """Whether an image has transparency: an alpha band, or a PNG's tRNS colour or palette entry."""
    return "A" in image.getbands() or "transparency" in image.info


def mask_from_alpha(image: Image.Image) -> Image.Image | None:
    """The area to redraw of an image with an alpha channel, OpenAI's way: its fully
    transparent pixels (alpha 0). None when the image has no such pixel."""
    if not has_alpha(image):
        return None
    alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    redraw = alpha == 0
    return Image.fromarray(np.where(redraw, 255, 0).astype(np.uint8), "L") if redraw.any() else None


def extend_canvas(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """Outpainting: the image on a canvas larger by these borders, the new pixels fully
    transparent (so `mask_from_alpha` marks them to be drawn)."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", (rgba.width + left + right, rgba.height + top + bottom), (0, 0, 0, 0))
    canvas.paste(rgba, (left, top))
    return canvas


def fill_transparent(image: Image.Image, seed: int) -> Image.Image:
    """The image as RGB with its fully transparent pixels filled with the nearest colours of
    the visible ones (edge-extended, smoothed over from coarser scales) plus a little noise
    from `seed`. A transparent pixel's RGB is whatever the editor left (often black): drawn
    from at a strength below 1, it would show through."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    known = rgba[..., 3] > 0
    rgb = rgba[..., :3]
    if known.all():
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    if not known.any():
        filled = np.full_like(rgb, 127.0)
    else:
        filled = np.where(known[..., None], rgb, _pull_push(rgb, known.astype(np.float64)))
    noise = np.random.default_rng(seed).normal(0.0, FILL_NOISE, rgb.shape)
    filled = np.where(known[..., None], rgb, filled + noise)
    return Image.fromarray(np.clip(filled, 0, 255).round().astype(np.uint8), "RGB")


def _pull_push(rgb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Every pixel's colour from the known ones around it: averaged down a pyramid until each
    level is covered, then brought back up where a level had no known pixel (pull-push)."""
    height, width = weight.shape
    if height <= 1 and width <= 1 or weight.all():
        total = weight.sum()
        mean = (rgb * weight[..., None]).sum(axis=(0, 1)) / total if total else np.full(3, 127.0)
        return np.where(weight[..., None] > 0, rgb, mean)
    # Down one level: 2x2 blocks, each the weighted mean of its known pixels.
    pad_h, pad_w = height % 2, width % 2
    padded_rgb = np.pad(rgb * weight[..., None], ((0, pad_h), (0, pad_w), (0, 0)))
    padded_w = np.pad(weight, ((0, pad_h), (0, pad_w)))
    h2, w2 = padded_w.shape[0] // 2, padded_w.shape[1] // 2
    block_w = padded_w.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    block_rgb = padded_rgb.reshape(h2, 2, w2, 2, 3).sum(axis=(1, 3))
    coarse_rgb = np.where(block_w[..., None] > 0, block_rgb / np.maximum(block_w, 1e-9)[..., None], 0.0)
    coarse = _pull_push(coarse_rgb, np.minimum(block_w, 1.0))
    up = coarse.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    return np.where(weight[..., None] > 0, rgb, up)


def feathered(mask: Image.Image, radius: int = FEATHER_PX) -> np.ndarray:
    """How much of the drawn image each pixel takes (0..1): 1 deep inside the masked area, a
    ramp over `radius` pixels inside its edge, exactly 0 wherever the mask keeps the image."""
    redraw = np.asarray(mask.convert("L")) > 0
    if radius <= 0:
        return redraw.astype(np.float64)
    hard = Image.fromarray(np.where(redraw, 255, 0).astype(np.uint8), "L")
    # Shrink the area by half the radius, then blur it over the radius: the ramp runs from the
    # original edge to `radius` pixels inside it, and what crosses the edge is cut off by the hard mask.
    half = radius // 2
    inner = hard.filter(ImageFilter.MinFilter(2 * half + 1)).filter(ImageFilter.BoxBlur(radius / 2))
    return (np.asarray(inner, dtype=np.float64) / 255.0) * redraw


def blend_back(original: Image.Image, drawn: Image.Image, mask: Image.Image, radius: int = FEATHER_PX) -> Image.Image:
    """The drawn image inside the mask, the original outside it, with a soft edge of `radius`
    pixels inside the masked area: the VAE's round trip and the sampler change every pixel a
    little, and the client asked to keep those."""
    size = drawn.size
    weight = feathered(mask.resize(size, Image.Resampling.NEAREST), radius)[..., None]
    kept = np.asarray(original.convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    new = np.asarray(drawn.convert("RGB"), dtype=np.float64)
    return Image.fromarray((kept * (1 - weight) + new * weight).round().astype(np.uint8), "RGB")


def redraws_anything(mask: Image.Image) -> bool:
    return bool(np.asarray(mask.convert("L")).any())


def takes_the_mask(pipe: Any) -> bool:
    """Whether the pipeline's UNet is an inpainting checkpoint's (it takes the mask and the masked
    image beside the latents): it draws nothing without them."""
    config = getattr(getattr(pipe, "unet", None), "config", None)
    return getattr(config, "in_channels", None) == INPAINTING_UNET_CHANNELS


def whole_redraw(size: tuple[int, int], count: int, single: bool, image: Any = None) -> dict[str, Any]:
    """An inpaint pipeline's arguments that redraw all of an image of `size`: A1111's text to image
    (and hires fix) on an inpainting model, whose UNet is told "all masked" (a white mask) over an
    image of nothing. `image`: what the pass starts from (the hires fix's upscaled first pass); none,
    a blank one, which a first pass at strength 1 only takes its size from. The masked image is
    diffusers' (the image x 0: grey, or zero latents); A1111 conditions its first pass on black."""
    mask = Image.new("L", size, 255)
    if image is None:
        image = Image.new("RGB", size)
        image = image if single else [image] * count
    return {"image": image, "mask_image": mask if single else [mask] * count, "width": size[0], "height": size[1]}
