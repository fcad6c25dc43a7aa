"""No black image served as a success: NaN or infinity in a pipeline's latents or its decode.

GTX 16xx cards (TU116/TU117) produce NaN in fp16, and many fine-tuned SD 1.5 VAEs overflow fp16
on every card; either way diffusers turns the NaN into a black PNG without a word. Every family's
pipeline ends with `self.vae.decode(latents, ...)`, so the check wraps that one call for the
run: diffusers still does its own unscaling, unpacking and upcasting (SDXL's force_upcast, FLUX's
shift factor, ...), and when nothing is wrong the images are the very ones it draws unwrapped.

- latents that are not finite going in: the denoiser (UNet or transformer) failed in its dtype;
  no decode can help, so `NonFiniteOutput` ends that image.
- a sample that is not finite coming out of finite latents: the VAE overflowed; that decode runs
  again with the VAE in float32 (as A1111's --no-half-vae fallback does), and a WARNING, once
  per model, names the lasting fix.

Image by image: in a batch, the images that came out finite are kept, and only the others fail.
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
def finite_decode(pipe: DiffusionPipeline) -> Iterator[dict[int, NonFiniteOutput]]:
    """For the pipeline calls inside: their VAE's decode checks what goes in and what comes out
    (see the module's docstring), image by image. Yields {row of the call: why} for the images
    that came out NaN while others of the call did not: those are decoded from zeros and must be
    dropped by the caller, so one image's NaN costs no other image of a batch (other clients'
    jobs, when requests are batched). Raises NonFiniteOutput when every image of a call fails."""
    failed: dict[int, NonFiniteOutput] = {}
    vae = getattr(pipe, "vae", None)
    if vae is None:
        yield failed
        return
    own = vars(vae).get("decode")  # an instance's own decode (none on diffusers' VAEs) comes back after
    original = vae.decode

    def decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        import torch

        def denoiser_failed() -> NonFiniteOutput:  # named only on a failure: no card lookup per decode
            return NonFiniteOutput("denoiser", _dtype_name(_denoiser_dtype(pipe)), _device_name(latents.device))

        finite = _finite_rows(latents)
        if not bool(finite.any()):
            raise denoiser_failed()
        if not bool(finite.all()):
            why = denoiser_failed()
            for row in _rows_not(finite):
                failed.setdefault(row, why)
            latents = _zeroed(latents, finite)
        out = original(latents, *args, **kwargs)
        sample = _sample(out)
        if bool(_finite_rows(sample).all()):
            return out
        vae_dtype = vae.dtype
        if vae_dtype == torch.float32:
            retried = sample
        else:
            vae.to(dtype=torch.float32)
            try:
                retried = _sample(original(latents.float(), *args, **kwargs))
            finally:
                vae.to(dtype=vae_dtype)
        decoded = _finite_rows(retried)
        vae_failed = NonFiniteOutput("vae", "float32", _device_name(latents.device))
        if not bool(decoded.any()):
            raise vae_failed
        if vae_dtype != torch.float32:
            _warn_once(pipe, vae, _dtype_name(vae_dtype))
        if not bool(decoded.all()):
            for row in _rows_not(decoded):
                failed.setdefault(row, vae_failed)
            retried = _zeroed(retried, decoded)
        retried = retried.to(sample.dtype)  # what the pipeline's post-processing expects from this VAE
        return (retried,) if isinstance(out, tuple) else type(out)(sample=retried)

    vae.decode = decode
    try:
        yield failed
    finally:
        if own is None:
            vars(vae).pop("decode", None)
        else:
            vae.decode = own


def _finite_rows(batch: torch.Tensor) -> torch.Tensor:
    """Per image of a batch (its first dimension), whether every value is finite."""
    import torch

    return torch.isfinite(batch.reshape(batch.shape[0], -1)).all(dim=1)


def _rows_not(finite: torch.Tensor) -> list[int]:
    return [int(row) for row in (~finite).nonzero().flatten()]


def _zeroed(batch: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """The batch with its non-finite images' values zero (a neutral latent or a grey image)."""
    import torch

    keep = finite.reshape(-1, *([1] * (batch.dim() - 1)))
    return torch.where(keep, batch, torch.zeros((), dtype=batch.dtype, device=batch.device))


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
