"""Whole-pipeline single files of the transformer families (SD3/3.5, FLUX.1, Chroma, Z-Image):
one `.safetensors` holding the transformer and some of the VAE and text encoders, as CivitAI's
all-in-one FLUX checkpoints and Stability's SD3.5 files "with clips" are laid out (ComfyUI's
names: `model.diffusion_model.*`, `vae.*`, `text_encoders.clip_l.*` / `clip_g.*` / `t5xxl.*`).

This module reads which parts a file holds (header only) and converts it offline into a
diffusers folder with diffusers' own single-file loaders, the architecture read from a local
config folder (never the hub). The parts a file lacks are left out of the folder: the model
store links them from a stored model of the family (alice/models/pipeline_files.py).
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from alice.engine.families import family_named, transformer_family
from alice.engine.pipeline_configs import read_config
from alice.engine.single_file import CONFIGS, _read_header
from alice.engine.transformer_files import refuse_scaled_fp8

logger = logging.getLogger("alice.engine")

TRANSFORMER_PREFIX = "model.diffusion_model."
# A part of an all-in-one file: the tensor name prefixes it comes under, and what it is, in words.
_PARTS = {
    "transformer": ((TRANSFORMER_PREFIX,), "transformer"),
    "vae": (("vae.", "first_stage_model."), "VAE"),
    "clip_l": (("text_encoders.clip_l.",), "CLIP-L text encoder"),
    "clip_g": (("text_encoders.clip_g.",), "CLIP-G text encoder"),
    "t5xxl": (("text_encoders.t5xxl.",), "T5 text encoder"),
}
# Each pipeline's weighted components and the file part each is read from; None where diffusers
# 0.42.1 reads no such part from a single file (Z-Image's Qwen3 text encoder): it always comes
# from a stored model. FLUX.2 and Qwen-Image have no whole-pipeline single-file loader.
_COMPONENTS: dict[str, dict[str, str | None]] = {
    "StableDiffusion3Pipeline": {"transformer": "transformer", "vae": "vae", "text_encoder": "clip_l",
                                 "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    "FluxPipeline": {"transformer": "transformer", "vae": "vae", "text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
    "ChromaPipeline": {"transformer": "transformer", "vae": "vae", "text_encoder": "t5xxl"},
    "ZImagePipeline": {"transformer": "transformer", "vae": "vae", "text_encoder": None},
}
# The released architecture shipped in alice/configs/ for a family (FLUX.1 dev's differs from
# schnell's only in `guidance_embeds`, set per file); others take their configs from --base.
SHIPPED_CONFIGS = {"sd3": CONFIGS / "sd35-medium", "flux1-dev": CONFIGS / "flux1-schnell",
                   "flux1-schnell": CONFIGS / "flux1-schnell"}
# The scheduler each FLUX.1 variant ships with (the BFL repos' scheduler_config.json): a dev file
# on a schnell base's configs (or the reverse) takes its own.
FLUX1_SCHEDULERS = {
    "flux1-dev": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096},
    "flux1-schnell": {"shift": 1.0, "use_dynamic_shifting": False},
}
_FP8 = ("F8_E4M3", "F8_E5M2")
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class PipelineFile:
    """What an all-in-one file holds, from its header (no weights are read)."""

    path: Path
    family: str
    held: tuple[str, ...]  # pipeline components read from the file
    lacking: tuple[str, ...]  # pipeline components it does not hold (or diffusers cannot read from it)
    fp8: tuple[str, ...]  # held text encoders stored in float8

    def describe(self, components: tuple[str, ...]) -> str:
        """The components in words: "text_encoder_2 (T5 text encoder)"."""
        parts = _COMPONENTS[family_named(self.family).text_to_image]
        return ", ".join(f"{c} ({_PARTS[parts[c]][1] if parts[c] else 'text encoder'})" for c in components)


def read_pipeline_file(path: Path) -> PipelineFile | None:
    """The family and parts of a transformer family's all-in-one file; None for any other file
    (an SD checkpoint, a transformer alone, a LoRA). ValueError for an unreadable file, or the
    whole checkpoint of a family diffusers converts no single file of."""
    path = Path(path)
    header = _read_header(path)
    names = list(header.shapes)
    transformer = [name for name in names if name.startswith(TRANSFORMER_PREFIX)]
    family = transformer_family(transformer) if transformer else None
    others = [name for name in names if not name.startswith(TRANSFORMER_PREFIX)]
    if family is None or not any(name.startswith(_prefixes("vae") + ("text_encoders.",)) for name in others):
        return None
    refuse_scaled_fp8(path, names)
    components = _COMPONENTS.get(family_named(family).text_to_image)
    if components is None:
        raise ValueError(f"{path.name} is a whole {family} checkpoint, which diffusers cannot convert from one "
                         "file: import the model's diffusers folder")
    held = tuple(c for c, part in components.items() if part and any(n.startswith(_prefixes(part)) for n in names))
    fp8 = tuple(c for c in held if c.startswith("text_encoder") and _mostly_fp8(header.dtypes, _prefixes(components[c])))
    lacking = tuple(c for c in components if c not in held)
    return PipelineFile(path, family, held, lacking, fp8)


def _prefixes(part: str) -> tuple[str, ...]:
    return _PARTS[part][0]


def _mostly_fp8(dtypes: dict[str, str], prefixes: tuple[str, ...]) -> bool:
    counts = Counter(dtype for name, dtype in dtypes.items() if name.startswith(prefixes))
    return bool(counts) and counts.most_common(1)[0][0] in _FP8


def convert_pipeline_file(file: PipelineFile, out_dir: Path, config_dir: Path, *, leave_out: tuple[str, ...] = ()) -> None:
    """Convert the file into a diffusers folder (safetensors) in `out_dir`, offline, with the
    architecture, tokenizers and scheduler of `config_dir` (a shipped config folder or a stored
    model's; its weights are not read). The components in `leave_out` are not converted: their
    model_index.json entries are `config_dir`'s, their files the caller's to add. The weights keep
    the file's precision (float32 stays so; float8 becomes bfloat16, which diffusers computes in)."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    family = family_named(file.family)
    dtype = _dtype(_read_header(file.path).dtypes)
    with tempfile.TemporaryDirectory(prefix="alice-configs-") as scratch:
        configs = _config_folder(Path(config_dir), Path(scratch), family.name)
        # The VAE first and apart: diffusers' Z-Image transformer converter empties the checkpoint
        # it is handed (every key popped), which leaves nothing for a VAE loaded after it.
        parts: dict[str, object] = {name: None for name in leave_out}
        if "vae" in file.held and "vae" not in leave_out:
            parts["vae"] = diffusers.AutoencoderKL.from_single_file(
                str(file.path), config=str(configs), subfolder="vae", local_files_only=True, torch_dtype=dtype)
        pipe = getattr(diffusers, family.text_to_image).from_single_file(
            str(file.path), config=str(configs), local_files_only=True, torch_dtype=dtype, **parts)
        for component in pipe.components.values():
            # T5's embedding is one tensor under two names; loaded from a file it comes apart,
            # and would be saved twice (a folder check then finds more values than parameters).
            if hasattr(component, "tie_weights"):
                component.tie_weights()
        pipe.save_pretrained(str(out_dir), safe_serialization=True)
        index = read_config(configs / "model_index.json")
    saved = read_config(Path(out_dir) / "model_index.json")
    saved.update({name: index[name] for name in leave_out if name in index})  # the parts linked in later
    (Path(out_dir) / "model_index.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    logger.info("converted %s (%s; from the file: %s) into %s", file.path.name, family.name,
                ", ".join(c for c in file.held if c not in leave_out), out_dir)
    del pipe
    gc.collect()  # gigabytes of weights: release them before the import checks the folder


def _dtype(dtypes: dict[str, str]) -> object:
    """The transformer's storage precision: float32 as is, float16 as is, else bfloat16."""
    import torch

    counts = Counter(dtype for name, dtype in dtypes.items() if name.startswith(TRANSFORMER_PREFIX))
    name = counts.most_common(1)[0][0] if counts else "BF16"
    return {"F32": torch.float32, "F16": torch.float16}.get(name, torch.bfloat16)


def _config_folder(source: Path, scratch: Path, family: str) -> Path:
    """`source`'s configs, tokenizers and scheduler without its weights, with the transformer
    config the file needs: the released one where `source` has none (a base stored without its
    transformer), FLUX.1's guidance embedder and scheduler as the file's variant has them."""
    folder = scratch / "configs"
    shutil.copytree(source, folder, ignore=lambda _, names: [n for n in names if n.endswith(_WEIGHT_SUFFIXES)])
    transformer = folder / "transformer" / "config.json"
    config = read_config(transformer) or read_config(SHIPPED_CONFIGS.get(family, source) / "transformer" / "config.json")
    guidance = family_named(family).guidance_embeds
    if guidance is not None:
        config["guidance_embeds"] = guidance
    transformer.parent.mkdir(exist_ok=True)
    transformer.write_text(json.dumps(config, indent=2) + "\n")
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if family in FLUX1_SCHEDULERS and scheduler.is_file():
        scheduler.write_text(json.dumps(read_config(scheduler) | FLUX1_SCHEDULERS[family], indent=2) + "\n")
    return folder
