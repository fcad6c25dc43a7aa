"""The tiny pipelines' weights under the names real single files use: BFL's FLUX.1 transformer
names, Z-Image's original names, and ComfyUI's all-in-one layout (`model.diffusion_model.`,
`vae.`, `text_encoders.clip_l.` / `clip_g.` / `t5xxl.`). Each is the reverse of diffusers 0.42.1's
conversion (loaders/single_file_utils.py), written by hand from it.

diffusers' FLUX.1 converter hard-codes FLUX.1's width (`inner_dim = 3072`, to split a single
block's fused `linear1`), so a tiny BFL file cannot convert as it is. `at_tiny_width` returns that
same function, line for line, with the constant 3072 swapped for the tiny width: every key it maps
is still diffusers' own mapping; only the width of real FLUX.1 (which this CPU cannot hold) is not
exercised by the tiny tests.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.support import original_vae_state_dict

FLUX1_WIDTH = 3072  # FLUX.1's inner dim, as the converter writes it


def at_tiny_width(converter: Callable, width: int) -> Callable:
    """diffusers' converter with FLUX.1's width constant replaced by `width` (nothing else changes)."""
    code = converter.__code__
    assert FLUX1_WIDTH in code.co_consts, "diffusers' converter no longer hard-codes FLUX.1's width"
    consts = tuple(width if value == FLUX1_WIDTH else value for value in code.co_consts)
    return types.FunctionType(code.replace(co_consts=consts), converter.__globals__, converter.__name__,
                              converter.__defaults__, converter.__closure__)


@contextmanager
def flux_converter_at_tiny_width(width: int = 32) -> Iterator[None]:
    """diffusers' FLUX.1 and Chroma transformer converters at the tiny width while the block
    runs, for every loader that looks them up (from_single_file of a transformer or a pipeline)."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    entries = [SINGLE_FILE_LOADABLE_CLASSES[name] for name in ("FluxTransformer2DModel", "ChromaTransformer2DModel")]
    originals = [entry["checkpoint_mapping_fn"] for entry in entries]
    for entry, original in zip(entries, originals):
        entry["checkpoint_mapping_fn"] = at_tiny_width(original, width)
    try:
        yield
    finally:
        for entry, original in zip(entries, originals):
            entry["checkpoint_mapping_fn"] = original


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale), diffusers' (scale, shift): its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel (or ChromaTransformer2DModel: FLUX.1's blocks without
    their modulation, and a distilled guidance layer) state dict under BFL's names
    (flux1-dev.safetensors', Chroma1-HD.safetensors')."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(new: str, old: str) -> None:
        for suffix in ("weight", "bias"):
            if f"{old}.{suffix}" in state:
                out[f"{new}.{suffix}"] = state.pop(f"{old}.{suffix}")

    def fuse(new: str, olds: list[str]) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = torch.cat([state.pop(f"{old}.{suffix}") for old in olds])

    for bfl, ours in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
        move(f"{bfl}.in_layer", f"time_text_embed.{ours}.linear_1")
        move(f"{bfl}.out_layer", f"time_text_embed.{ours}.linear_2")
    move("distilled_guidance_layer.in_proj", "distilled_guidance_layer.in_proj")
    move("distilled_guidance_layer.out_proj", "distilled_guidance_layer.out_proj")
    guidance_layers = {int(key.split(".")[2]) for key in state if key.startswith("distilled_guidance_layer.layers.")}
    for i in sorted(guidance_layers):
        move(f"distilled_guidance_layer.layers.{i}.in_layer", f"distilled_guidance_layer.layers.{i}.linear_1")
        move(f"distilled_guidance_layer.layers.{i}.out_layer", f"distilled_guidance_layer.layers.{i}.linear_2")
        out[f"distilled_guidance_layer.norms.{i}.scale"] = state.pop(f"distilled_guidance_layer.norms.{i}.weight")
    move("txt_in", "context_embedder")
    move("img_in", "x_embedder")
    doubles = sorted({int(key.split(".")[1]) for key in state if key.startswith("transformer_blocks.")})
    for i in doubles:
        ours, bfl = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        move(f"{bfl}img_mod.lin", f"{ours}norm1.linear")
        move(f"{bfl}txt_mod.lin", f"{ours}norm1_context.linear")
        fuse(f"{bfl}img_attn.qkv", [f"{ours}attn.to_{x}" for x in "qkv"])
        fuse(f"{bfl}txt_attn.qkv", [f"{ours}attn.add_{x}_proj" for x in "qkv"])
        for side, norms in (("img", ("norm_q", "norm_k")), ("txt", ("norm_added_q", "norm_added_k"))):
            out[f"{bfl}{side}_attn.norm.query_norm.scale"] = state.pop(f"{ours}attn.{norms[0]}.weight")
            out[f"{bfl}{side}_attn.norm.key_norm.scale"] = state.pop(f"{ours}attn.{norms[1]}.weight")
        move(f"{bfl}img_mlp.0", f"{ours}ff.net.0.proj")
        move(f"{bfl}img_mlp.2", f"{ours}ff.net.2")
        move(f"{bfl}txt_mlp.0", f"{ours}ff_context.net.0.proj")
        move(f"{bfl}txt_mlp.2", f"{ours}ff_context.net.2")
        move(f"{bfl}img_attn.proj", f"{ours}attn.to_out.0")
        move(f"{bfl}txt_attn.proj", f"{ours}attn.to_add_out")
    singles = sorted({int(key.split(".")[1]) for key in state if key.startswith("single_transformer_blocks.")})
    for i in singles:
        ours, bfl = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        move(f"{bfl}modulation.lin", f"{ours}norm.linear")
        fuse(f"{bfl}linear1", [f"{ours}attn.to_q", f"{ours}attn.to_k", f"{ours}attn.to_v", f"{ours}proj_mlp"])
        out[f"{bfl}norm.query_norm.scale"] = state.pop(f"{ours}attn.norm_q.weight")
        out[f"{bfl}norm.key_norm.scale"] = state.pop(f"{ours}attn.norm_k.weight")
        move(f"{bfl}linear2", f"{ours}proj_out")
    move("final_layer.linear", "proj_out")
    for suffix in ("weight", "bias"):
        if f"norm_out.linear.{suffix}" in state:  # Chroma's final norm has no modulation
            out[f"final_layer.adaLN_modulation.1.{suffix}"] = _swap_halves(state.pop(f"norm_out.linear.{suffix}"))
    assert not state, f"unmapped: {sorted(state)[:5]}"
    return out


def sd3_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers SD3Transformer2DModel state dict under Stability's MMDiT names
    (sd3.5_medium.safetensors'): the reverse of convert_sd3_transformer_checkpoint_to_diffusers."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(new: str, old: str, change: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        for suffix in ("weight", "bias"):
            if f"{old}.{suffix}" in state:
                out[f"{new}.{suffix}"] = change(state.pop(f"{old}.{suffix}"))

    def fuse(new: str, olds: list[str]) -> None:
        for suffix in ("weight", "bias"):
            out[f"{new}.{suffix}"] = torch.cat([state.pop(f"{old}.{suffix}") for old in olds])

    out["pos_embed"] = state.pop("pos_embed.pos_embed")
    move("x_embedder.proj", "pos_embed.proj")
    move("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    move("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    move("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    move("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    move("context_embedder", "context_embedder")
    layers = sorted({int(key.split(".")[1]) for key in state if key.startswith("transformer_blocks.")})
    for i in layers:
        ours, x, context = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == layers[-1]  # its context stream ends in a norm alone (SD3's `context_pre_only`)
        fuse(f"{x}attn.qkv", [f"{ours}attn.to_{q}" for q in "qkv"])
        fuse(f"{context}attn.qkv", [f"{ours}attn.add_{q}_proj" for q in "qkv"])
        for norm, original in (("norm_q", f"{x}attn.ln_q"), ("norm_k", f"{x}attn.ln_k"),
                               ("norm_added_q", f"{context}attn.ln_q"), ("norm_added_k", f"{context}attn.ln_k")):
            move(original, f"{ours}attn.{norm}")
        move(f"{x}attn.proj", f"{ours}attn.to_out.0")
        move(f"{context}attn.proj", f"{ours}attn.to_add_out")
        if f"{ours}attn2.to_q.weight" in state:  # SD3.5 Medium's dual attention
            fuse(f"{x}attn2.qkv", [f"{ours}attn2.to_{q}" for q in "qkv"])
            move(f"{x}attn2.ln_q", f"{ours}attn2.norm_q")
            move(f"{x}attn2.ln_k", f"{ours}attn2.norm_k")
            move(f"{x}attn2.proj", f"{ours}attn2.to_out.0")
        move(f"{x}adaLN_modulation.1", f"{ours}norm1.linear")
        move(f"{context}adaLN_modulation.1", f"{ours}norm1_context.linear", _swap_halves if last else lambda t: t)
        move(f"{x}mlp.fc1", f"{ours}ff.net.0.proj")
        move(f"{x}mlp.fc2", f"{ours}ff.net.2")
        move(f"{context}mlp.fc1", f"{ours}ff_context.net.0.proj")
        move(f"{context}mlp.fc2", f"{ours}ff_context.net.2")
    move("final_layer.linear", "proj_out")
    move("final_layer.adaLN_modulation.1", "norm_out.linear", _swap_halves)
    assert not state, f"unmapped: {sorted(state)[:5]}"
    return out


# Z-Image's original names, the reverse of diffusers' Z_IMAGE_KEYS_RENAME_DICT (and its fused qkv).
_Z_IMAGE_RENAMES = (("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1.", "x_embedder."),
                    (".attention.to_out.0.", ".attention.out."), (".attention.norm_k.", ".attention.k_norm."),
                    (".attention.norm_q.", ".attention.q_norm."))


def z_image_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ZImageTransformer2DModel state dict under Z-Image's original names."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q.weight" in key:
            stem = key.removesuffix(".attention.to_q.weight")
            tensor = torch.cat([state[f"{stem}.attention.to_{x}.weight"] for x in "qkv"])
            key = f"{stem}.attention.qkv.weight"
        for ours, original in _Z_IMAGE_RENAMES:
            key = key.replace(ours, original)
        out[key] = tensor
    return out


def _text_model(prefix: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CLIP text encoder as ComfyUI's files hold one: `<prefix>transformer.text_model.*`
    (transformers 5's CLIPTextModel has no `text_model.` level; the files do)."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("text_projection."):
            state[f"{prefix}transformer.{key}"] = tensor
        else:
            state[f"{prefix}transformer.text_model.{key.removeprefix('text_model.')}"] = tensor
    return state


def _t5(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"text_encoders.t5xxl.transformer.{key}": tensor for key, tensor in model.state_dict().items()}


def write_all_in_one(folder: Path, out: Path, family: str, *, parts: tuple[str, ...] | None = None,
                     transformer_names: str = "original") -> Path:
    """One all-in-one `.safetensors` of a tiny pipeline folder in ComfyUI's layout, holding `parts`
    (default: every part a real file of the family can hold). `transformer_names`: "original"
    (BFL's, Stability's, Z-Image's) or "diffusers"."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    everything = {"flux": ("transformer", "vae", "clip_l", "t5xxl"), "chroma": ("transformer", "vae", "t5xxl"),
                  "sd3": ("transformer", "vae", "clip_l", "clip_g", "t5xxl"), "zimage": ("transformer", "vae")}[family]
    parts = everything if parts is None else parts
    state: dict[str, torch.Tensor] = {}
    if "transformer" in parts:
        weights = pipe.transformer.state_dict()
        if transformer_names == "original":
            weights = {"flux": flux_to_bfl, "chroma": flux_to_bfl, "sd3": sd3_to_original,
                       "zimage": z_image_to_original}[family](weights)
        state.update({f"model.diffusion_model.{key}": tensor for key, tensor in weights.items()})
    if "vae" in parts:
        state.update(original_vae_state_dict(pipe.vae, "vae."))
    if "clip_l" in parts:
        state.update(_text_model("text_encoders.clip_l.", pipe.text_encoder))
    if "clip_g" in parts:
        state.update(_text_model("text_encoders.clip_g.", pipe.text_encoder_2))
    if "t5xxl" in parts:
        state.update(_t5(getattr(pipe, {"flux": "text_encoder_2", "chroma": "text_encoder", "sd3": "text_encoder_3"}[family])))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.detach().clone().contiguous() for key, tensor in state.items()}, str(out))
    return out
