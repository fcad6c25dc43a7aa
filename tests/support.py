"""Test-only plumbing: building a second service app in one process, and model files in the
layouts the loaders read. What bench/ shares with the tests lives in harness/."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def forget_service_metrics() -> None:
    """Let a second service app be built in this process.

    BentoML registers its request metrics in prometheus_client's global registry each time
    an app is built, and a second registration raises DuplicateTimeseries. A real server
    builds one app per process; tests build one per module. (ALICE's own metrics are
    created once per process and stay.)
    """
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            REGISTRY.unregister(collector)


def save_tiny_sdxl_pipeline(folder: Path) -> Path:
    """A tiny SDXL-shaped pipeline (two text encoders, text-time conditioning), as diffusers'
    own tests build one: it loads and draws through the same code as the real SDXL."""
    import tempfile as _tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from alice.engine.tokenizer import write_offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=8,
        )
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=4, norm_num_groups=8, sample_size=64)
        text_config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                     num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
                                     hidden_act="gelu", projection_dim=32)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    with _tempfile.TemporaryDirectory() as scratch:
        write_offline_clip_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch)
    for encoder in (text_encoder, text_encoder_2):
        encoder.config.eos_token_id = tokenizer.eos_token_id
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_original_checkpoint(pipe, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save an SD-1.x-shaped diffusers pipeline as one `.safetensors` file in the original
    (CompVis / A1111 / CivitAI) key layout, the reverse of diffusers' single-file conversion."""
    from safetensors.torch import save_file

    state = original_layout_state_dict(pipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(path), metadata=metadata)
    return path


def original_layout_state_dict(pipe) -> dict:
    """The UNet, VAE and (CLIP ViT-L style) text encoder of a pipeline under their original names."""
    unet = pipe.unet
    per_level = unet.config.layers_per_block
    resnet_names = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                    ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
    unet_fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL
                  "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}

    def resnet(rest: str) -> str:
        for new, old in resnet_names:
            rest = rest.replace(new, old)
        return rest

    def unet_key(key: str) -> str:
        parts = key.split(".")
        for module, original in unet_fixed.items():
            if key.startswith(module + "."):
                return original + key.removeprefix(module)
        if parts[0] == "mid_block":
            index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
            tail = ".".join(parts[3:])
            return f"middle_block.{index}.{resnet(tail) if parts[1] == 'resnets' else tail}"
        level, kind, layer, tail = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if parts[0] == "down_blocks":
            if kind == "downsamplers":  # downsamplers.0.conv.* -> input_blocks.N.0.op.*
                return f"input_blocks.{(level + 1) * (per_level + 1)}.0.op.{tail.removeprefix('conv.')}"
            block = 1 + level * (per_level + 1) + layer
            return f"input_blocks.{block}.0.{resnet(tail)}" if kind == "resnets" else f"input_blocks.{block}.1.{tail}"
        if kind == "upsamplers":  # after the level's last resnet (and its attention, if any)
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            return f"output_blocks.{level * (per_level + 1) + per_level}.{2 if has_attention else 1}.{tail}"
        block = level * (per_level + 1) + layer
        return f"output_blocks.{block}.0.{resnet(tail)}" if kind == "resnets" else f"output_blocks.{block}.1.{tail}"

    state = {}
    for key, tensor in unet.state_dict().items():
        state[f"model.diffusion_model.{unet_key(key)}"] = tensor
    state.update(original_vae_state_dict(pipe.vae, "first_stage_model."))
    for key, tensor in pipe.text_encoder.state_dict().items():
        # transformers 5's CLIPTextModel has no `text_model.` level; the original layout does
        state[f"cond_stage_model.transformer.text_model.{key.removeprefix('text_model.')}"] = tensor
    return state


def original_vae_state_dict(vae, prefix: str) -> dict:
    """An AutoencoderKL's weights under their original (CompVis / LDM) names, after `prefix`:
    `first_stage_model.` in SD checkpoints, `vae.` in the FLUX/SD3 all-in-one files."""
    levels = len(vae.config.block_out_channels)
    vae_attention = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]

    def vae_key(key: str, tensor):
        coder, rest = key.split(".", 1)
        rest = rest.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = rest.split(".")
        if parts[0] == "down_blocks":  # encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j
            rest = f"down.{parts[1]}." + ".".join(parts[2:]).replace("resnets", "block").replace(
                "downsamplers.0", "downsample")
        elif parts[0] == "up_blocks":  # decoder levels are numbered from the bottom in the original
            rest = f"up.{levels - 1 - int(parts[1])}." + ".".join(parts[2:]).replace("resnets", "block").replace(
                "upsamplers.0", "upsample")
        elif parts[0] == "mid_block" and parts[1] == "resnets":
            rest = f"mid.block_{int(parts[2]) + 1}." + ".".join(parts[3:])
        elif parts[0] == "mid_block":  # attention: linear layers were 1x1 convolutions
            tail = ".".join(parts[3:])
            for new, old in vae_attention:
                tail = tail.replace(new, old)
            rest = f"mid.attn_1.{tail}"
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        return (f"{coder}.{rest}" if coder in ("encoder", "decoder") else key), tensor

    state = {}
    for key, tensor in vae.state_dict().items():
        new_key, new_tensor = vae_key(key, tensor)
        state[f"{prefix}{new_key}"] = new_tensor
    return state


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread while the block runs: on a small, busy machine torch's default thread
    count can make a tiny generation take seconds (its threads spin waiting for each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
