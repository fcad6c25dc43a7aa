"""No black image served as a success: NaN or infinity in a pipeline's latents or its decode.

GTX 16xx cards (TU116/TU117) produce NaN in fp16, and many fine-tuned SD 1.5 VAEs overflow fp16
on every card; either way diffusers turns the NaN into a black PNG without a word. Every family's
pipeline ends with `self.vae.decode(latents, ...)`, so the check wraps that one call for the
run: diffusers still does its own unscaling, unpacking and upcasting (SDXL's force_upcast, FLUX's
shift factor, ...), and when nothing is wrong the images are the very ones it draws unwrapped.

- latents that are not finite going in: the denoiser (UNet or transformer) failed in its dtype;
  no decode can help, so `NonFiniteOutput` ends the call.
- a sample that is not finite coming out of finite latents: the VAE overflowed; that decode runs
  again with the VAE in float32 (as A1111's --no-half-vae fallback does), and a WARNING, once
  per model, names the lasting fix.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch
    from diffusers import DiffusionPipeline

logger = logging.getLogger("alice.engine")

DTYPE_ADVICE = "set ALICE_DTYPE=float32 (or bfloat16 on an Ampere or newer card) to avoid it"

_warned: weakref.WeakSet[Any] = weakref.WeakSet()  # VAEs whose fp32 retry was logged already


class NonFiniteOutput(Exception):
    """A pipeline produced NaN or infinity: `part` (denoiser or vae) in `dtype` on `device`."""

    def __init__(self, part: str, dtype: str, device: str) -> None:
        self.part, self.dtype, self.device = part, dtype, device
        what = "the denoiser's latents" if part == "denoiser" else "the VAE's decode, even in float32,"
        super().__init__(f"{what} came out NaN in {dtype} on {device}; {DTYPE_ADVICE}")


@contextlib.contextmanager
def finite_decode(pipe: DiffusionPipeline) -> Iterator[None]:
    """For the pipeline call inside: its VAE's decode checks what goes in and what comes out
    (see the module's docstring). Raises NonFiniteOutput out of the call."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        yield
        return
    own = vars(vae).get("decode")  # an instance's own decode (none on diffusers' VAEs) comes back after
    original = vae.decode

    def decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        import torch

        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteOutput("denoiser", _dtype_name(_denoiser_dtype(pipe)), _device_name(latents.device))
        out = original(latents, *args, **kwargs)
        sample = _sample(out)
        if bool(torch.isfinite(sample).all()):
            return out
        vae_dtype = vae.dtype
        if vae_dtype == torch.float32:
            raise NonFiniteOutput("vae", "float32", _device_name(latents.device))
        vae.to(dtype=torch.float32)
        try:
            retried = _sample(original(latents.float(), *args, **kwargs))
        finally:
            vae.to(dtype=vae_dtype)
        if not bool(torch.isfinite(retried).all()):
            raise NonFiniteOutput("vae", "float32", _device_name(latents.device))
        _warn_once(pipe, vae, _dtype_name(vae_dtype))
        retried = retried.to(sample.dtype)  # what the pipeline's post-processing expects from this VAE
        return (retried,) if isinstance(out, tuple) else type(out)(sample=retried)

    vae.decode = decode
    try:
        yield
    finally:
        if own is None:
            vars(vae).pop("decode", None)
        else:
            vae.decode = own


def _sample(out: Any) -> torch.Tensor:
    """The decoded images of `vae.decode`'s answer: a tuple (return_dict=False) or DecoderOutput."""
    return out[0] if isinstance(out, tuple) else out.sample


def _warn_once(pipe: DiffusionPipeline, vae: Any, dtype: str) -> None:
    if vae in _warned:
        return
    _warned.add(vae)
    model = Path(getattr(pipe, "name_or_path", "") or "").name or type(pipe).__name__
    logger.warning(
        "model %s: its VAE's decode overflowed in %s (NaN, a black image); decoded again in float32. "
        "Give the model an fp32-safe VAE (e.g. madebyollin's sdxl-vae-fp16-fix for SDXL) or %s",
        model, dtype, DTYPE_ADVICE.removeprefix("set "),
    )


def _denoiser_dtype(pipe: DiffusionPipeline) -> Any:
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    return getattr(denoiser, "dtype", None)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "its dtype"


def _device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "the CPU" if device.type == "cpu" else device.type
