"""Single-file checkpoints (the CivitAI / A1111 `.safetensors` format) into diffusers folders.

The family comes from the weights' names and shapes, never from the file name. Conversion
reads the architecture from the config folders shipped in `alice/configs/` (see
build_configs.py there), so it never reaches for the hub.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from alice.engine.families import checkpoint_family, family_named

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch

logger = logging.getLogger("alice.engine")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # alice/configs/{sd15,sd2,sdxl}
_UNET = "model.diffusion_model."
_VAE = "first_stage_model."
# ModelSpec metadata (written by kohya's sd-scripts and others): "v" or "epsilon".
_PREDICTION_TYPES = {"v": "v_prediction", "v_prediction": "v_prediction", "epsilon": "epsilon"}


@dataclass(frozen=True)
class _Header:
    """What a safetensors file says about itself; the weights are not read."""

    shapes: dict[str, list[int]]
    dtypes: dict[str, str]  # safetensors' names: F32, F16, BF16, ...
    metadata: dict[str, str]


def _read_header(path: Path) -> _Header:
    try:
        with safe_open(str(path), framework="pt") as weights:
            slices = {key: weights.get_slice(key) for key in weights.keys()}
            return _Header(
                shapes={key: list(s.get_shape()) for key, s in slices.items()},
                dtypes={key: s.get_dtype() for key, s in slices.items()},
                metadata=weights.metadata() or {},
            )
    except Exception as exc:  # safetensors raises its own error types, or OSError
        hint = ""
        if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
            hint = "; pickled checkpoints are not imported (loading one can run code): use its .safetensors version"
        raise ValueError(f"{path} is not a readable .safetensors file ({type(exc).__name__}){hint}") from None


def detect_checkpoint_family(path: Path) -> str:
    """The family (`sd15`, `sd2`, `sdxl`) of a single-file Stable Diffusion checkpoint, from its tensors.

    ValueError for anything else: not safetensors, a LoRA, a VAE or text encoder alone,
    an inpainting model or the SDXL refiner.
    """
    path = Path(path)
    shapes = _read_header(path).shapes
    if not any(key.startswith(_UNET) for key in shapes):
        if any("lora" in key.lower() for key in shapes):
            raise ValueError(f"{path.name} is a LoRA, not a checkpoint: import it as a LoRA")
        raise ValueError(f"{path.name} is not a Stable Diffusion checkpoint (it has no '{_UNET}*' UNet weights)")
    if not any(key.startswith(_VAE) for key in shapes):
        raise ValueError(f"{path.name} has no VAE weights ('{_VAE}*'); only full checkpoints can be imported")
    conv_in = shapes.get(f"{_UNET}input_blocks.0.0.weight", [0, 4])
    if len(conv_in) > 1 and conv_in[1] != 4:
        raise ValueError(
            f"{path.name} is not a text-to-image checkpoint (its UNet takes {conv_in[1]} channels, "
            "as inpainting models do); only text-to-image checkpoints can be imported"
        )
    family = checkpoint_family(shapes)  # from its text encoders' tensors (alice/engine/families.py)
    if family is not None:
        return family
    if any(key.startswith("conditioner.") for key in shapes):  # SDXL's text encoders, but not both
        raise ValueError(f"{path.name} looks like the SDXL refiner (one text encoder); it cannot be imported alone")
    raise ValueError(f"{path.name} has no text encoder weights ('cond_stage_model.*'); it cannot be imported")


def convert_single_file(path: Path, out_dir: Path, family: str, *, config_dir: Path | None = None) -> None:
    """Load a single-file checkpoint offline and save it as a diffusers folder (safetensors).

    `config_dir` defaults to the shipped architecture of that family; it is there for models
    with other shapes (the tests' tiny demo). The weights keep the file's precision, and a
    prediction type written in the file's ModelSpec metadata (SD 2.x-base is epsilon, some
    SDXL models are v-prediction) overrides the family's default.
    """
    path, out_dir = Path(path), Path(out_dir)
    pipeline_class = family_named(family).text_to_image  # ValueError for an unknown family
    config_dir = Path(config_dir) if config_dir is not None else CONFIGS / family
    if not config_dir.is_dir():  # the transformer families' all-in-one files: alice/engine/pipeline_files.py
        raise ValueError(f"{family} single files are not Stable Diffusion checkpoints; convert_pipeline_file converts them")
    header = _read_header(path)
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    pipe = getattr(diffusers, pipeline_class).from_single_file(
        str(path), config=str(config_dir), local_files_only=True, dtype=_half_precision(header)
    )
    prediction_type = _PREDICTION_TYPES.get(header.metadata.get("modelspec.prediction_type", "").strip().lower())
    if prediction_type is None and "v_pred" in header.shapes:  # ComfyUI's marker tensor for v-prediction
        prediction_type = "v_prediction"
    if prediction_type and prediction_type != pipe.scheduler.config.get("prediction_type"):
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    logger.info("converted %s (%s) into %s", path.name, family, out_dir)
    del pipe
    gc.collect()  # a few GB of weights: release them before the import loads the folder again


def _half_precision(header: _Header) -> torch.dtype | None:
    """fp16 or bf16 when most of the UNet's weights are stored so (they stay so); None loads
    float32, diffusers' default."""
    import torch

    counts = Counter(dtype for key, dtype in header.dtypes.items() if key.startswith(_UNET))
    name = counts.most_common(1)[0][0] if counts else "F32"
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(name)


class _EmptyFp32ListFilter(logging.Filter):
    """diffusers warns "modules ... should be kept in float32: []" on every half-precision
    load, even when the list is empty; that one says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFp32ListFilter())
