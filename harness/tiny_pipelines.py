"""Tiny random-weight pipelines of the transformer families, built offline for CPU tests.

Each `build_tiny_<family>(folder)` writes a complete diffusers folder (model_index.json, every
component as safetensors, tokenizers made here, nothing downloaded) that
`DiffusionPipeline.from_pretrained(folder, local_files_only=True)` loads as the real family's
pipeline class. The component classes and layout are the real ones; only the sizes shrink.

Sizes common to all families, and why:
- VAEs keep the real 8x downscale (4 blocks) and 16 latent channels, so the pipelines'
  size checks (multiples of 16), latent packing and transformer `in_channels` (16, or 64
  after 2x2 packing) are exercised exactly as with the real models. A 64x64 image is an
  8x8 latent: 16 image tokens after packing.
- Transformers are 2 heads of 16 (inner dim 32) with one block of each kind.
- Text encoders are hidden 32, 2 layers, but keep the real sequence lengths (CLIP 77,
  T5 512): the tokenizers' `model_max_length` must be set or every call fails with
  `OverflowError: int too big to convert`.
Weights are drawn from a fixed seed inside `fork_rng`, so a build is deterministic and
leaves the caller's global RNG alone.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from alice.engine.tokenizer import write_offline_clip_tokenizer

SEED = 0
HIDDEN = 32  # every text encoder's hidden size, and the transformers' inner dim
CLIP_TOKENS = 77  # real CLIP length: SD3 pads CLIP to 77, FLUX's pooled vector reads token 77's EOS
T5_TOKENS = 512  # real T5 length: FLUX/Chroma default max_sequence_length is 512
# Words that become single tokens, so prompts in tests are short sequences of known ids.
WORDS = ("a", "the", "red", "blue", "green", "circle", "square", "cat", "on", "of", "photo")


@contextmanager
def _seeded(seed: int = SEED) -> Iterator[None]:
    """Deterministic weights without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- tokenizers (all built locally) ---------------------------------------------------


def clip_tokenizer() -> Any:
    """The repo's offline byte-level CLIP BPE (alice/engine/tokenizer.py), 77 tokens."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        write_offline_clip_tokenizer(Path(scratch), CLIP_TOKENS, WORDS)
        return CLIPTokenizer.from_pretrained(scratch)


def t5_tokenizer() -> Any:
    """A SentencePiece-style Unigram T5 tokenizer: <pad>=0, </s>=1, <unk>=2 as in T5.

    Pieces are the listed words (with the word-start marker) and single ASCII letters, digits
    and punctuation; anything else becomes <unk>. `extra_ids=0`: T5's 100 sentinel tokens
    serve its pre-training only and would just grow the embedding table.
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -1.0) for word in WORDS]
    characters = "abcdefghijklmnopqrstuvwxyz" "ABCDEFGHIJKLMNOPQRSTUVWXYZ" "0123456789.,!?'-"
    pieces += [(ch, -5.0) for ch in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_TOKENS)


# --- text encoders ----------------------------------------------------------------------


def clip_text(tokenizer: Any, with_projection: bool) -> Any:
    """CLIP text encoder: `CLIPTextModel` (FLUX) or `...WithProjection` (SD3's L and G)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_TOKENS,
        projection_dim=HIDDEN,  # SD3's pooled vector = L's and G's projections concatenated
        hidden_act="gelu",  # real SD3/FLUX CLIPs use quick_gelu/gelu; either runs
        # The pooled output is read at the EOS id, so these must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def t5_encoder(tokenizer: Any, d_model: int = HIDDEN) -> Any:
    """T5 v1.1-style encoder (gated GELU, no tied embeddings), as SD3/FLUX/Chroma use."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as in the real encoders
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


# --- VAE and schedulers -----------------------------------------------------------------


def vae_16ch(scaling_factor: float, shift_factor: float) -> Any:
    """AutoencoderKL like SD3's/FLUX's: 16 latent channels, 8x, no quant convs."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 4 blocks = the real 8x downscale
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,  # must divide every block's channels
        sample_size=64,
        scaling_factor=scaling_factor,  # the real VAE's values: the pipelines apply them
        shift_factor=shift_factor,
        use_quant_conv=False,  # SD3 and FLUX VAEs have neither quant conv
        use_post_quant_conv=False,
    ).eval()


def tiny_autoencoder(latent_channels: int = 4, seed: int = SEED) -> Any:
    """AutoencoderTiny like TAESD's (4 latent channels) or TAEF1's (16): the real 8x upscale,
    blocks of 8 channels, random weights (the shapes are the point)."""
    from diffusers import AutoencoderTiny

    with _seeded(seed):
        return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                               num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                               latent_channels=latent_channels).eval()


def build_tiny_autoencoder(folder: Path, latent_channels: int = 4) -> Path:
    """A tiny autoencoder's folder as madebyollin/taesd ships one: config.json and
    diffusion_pytorch_model.safetensors, no model_index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_autoencoder(latent_channels).save_pretrained(str(folder), safe_serialization=True)
    return folder


def flow_scheduler(dynamic: bool, shift: float = 3.0) -> Any:
    """FlowMatchEuler as the real repos configure it: FLUX-dev/Chroma/Z-Image shift per
    resolution (`use_dynamic_shifting`, the pipeline passes `mu`); SD3 and schnell don't."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not dynamic:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=shift,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _save(pipe: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


# --- families ---------------------------------------------------------------------------


def build_tiny_sd3(folder: Path) -> Path:
    """StableDiffusion3Pipeline: CLIP-L + CLIP-G (both WithProjection) + T5, SD3Transformer2DModel.

    SD3 joins CLIP-L's and CLIP-G's hidden states on the feature axis (32 + 32), pads them to
    T5's width and appends T5's tokens, so T5's d_model (64) = `joint_attention_dim` and must be
    at least the two CLIP widths together. The pooled vector is both projections concatenated:
    `pooled_projection_dim` = 32 + 32.
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok_t5 = clip_tokenizer(), t5_tokenizer()
    with _seeded():
        pipe = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(
                sample_size=8,  # 64 px / 8: the default size the pipeline draws
                patch_size=2,  # as the real model
                in_channels=16,
                out_channels=16,
                num_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=2 * HIDDEN,
                caption_projection_dim=2 * 16,  # = heads x head dim (inner dim)
                pooled_projection_dim=2 * HIDDEN,
                pos_embed_max_size=16,  # crops positions up to 128 px at patch 2
            ).eval(),
            scheduler=flow_scheduler(dynamic=False, shift=3.0),
            vae=vae_16ch(scaling_factor=1.5305, shift_factor=0.0609),
            text_encoder=clip_text(tok, with_projection=True),
            tokenizer=tok,
            text_encoder_2=clip_text(tok, with_projection=True),
            tokenizer_2=tok,
            text_encoder_3=t5_encoder(tok_t5, d_model=2 * HIDDEN),
            tokenizer_3=tok_t5,
        )
    return _save(pipe, folder)


def _flux_transformer(guidance_embeds: bool) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing, as the real model
        num_layers=1,  # one double-stream block
        num_single_layers=1,  # one single-stream block
        attention_head_dim=16,  # must equal sum(axes_dims_rope)
        num_attention_heads=2,
        joint_attention_dim=HIDDEN,  # T5's d_model
        pooled_projection_dim=HIDDEN,  # CLIP's pooled output (CLIPTextModel: hidden size)
        guidance_embeds=guidance_embeds,  # dev: True; schnell: False
        axes_dims_rope=(4, 6, 6),  # (text id, row, col) rope dims; real (16, 56, 56)
    ).eval()


def build_tiny_flux(folder: Path, schnell: bool = False) -> Path:
    """FluxPipeline: CLIP (pooled vector) + T5 (sequence), FluxTransformer2DModel.

    dev and schnell differ only by `guidance_embeds` and the scheduler: dev shifts per
    resolution (dynamic), schnell uses a fixed shift of 1.0.
    """
    from diffusers import FluxPipeline

    tok, tok_t5 = clip_tokenizer(), t5_tokenizer()
    with _seeded():
        pipe = FluxPipeline(
            scheduler=flow_scheduler(dynamic=not schnell, shift=1.0 if schnell else 3.0),
            vae=vae_16ch(scaling_factor=0.3611, shift_factor=0.1159),
            text_encoder=clip_text(tok, with_projection=False),
            tokenizer=tok,
            text_encoder_2=t5_encoder(tok_t5),
            tokenizer_2=tok_t5,
            transformer=_flux_transformer(guidance_embeds=not schnell),
        )
    return _save(pipe, folder)


def build_tiny_flux_schnell(folder: Path) -> Path:
    return build_tiny_flux(folder, schnell=True)


def build_tiny_chroma(folder: Path) -> Path:
    """ChromaPipeline: T5 only (no CLIP, no pooled vector), ChromaTransformer2DModel.

    Chroma replaces FLUX's per-block modulation with one "approximator" MLP that emits
    3 x single + 12 x double + 2 modulation vectors from the timestep.
    """
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    tok_t5 = t5_tokenizer()
    with _seeded():
        pipe = ChromaPipeline(
            scheduler=flow_scheduler(dynamic=True),
            vae=vae_16ch(scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's VAE
            text_encoder=t5_encoder(tok_t5),
            tokenizer=tok_t5,
            transformer=ChromaTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=HIDDEN,
                axes_dims_rope=(4, 6, 6),
                approximator_num_channels=64,  # real value: sinusoidal timestep+guidance input
                approximator_hidden_dim=HIDDEN,  # real 5120
                approximator_layers=1,  # real 5
            ).eval(),
        )
    return _save(pipe, folder)


# Qwen-style chat template (Qwen3's shape, shortened): Z-Image asks for
# `enable_thinking=True` (nothing added), FLUX.2 Klein for False (an empty think block).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN_VISION_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen-Image drops the first 34 tokens of its prompt template (its system prompt) from the
# encoder's output: 34 is the real tokenizer's count. These pieces (as Qwen's pre-tokenizer
# cuts the template) are made single tokens so the tiny tokenizer gives 34 too.
QWEN_IMAGE_PIECES = (
    "system user Describe the image by detailing color shape size texture quantity text"
    " spatial relationships of objects and background"
).split()


def _byte_level_merges(pieces: list[str]) -> list[tuple[str, str]]:
    """BPE merges (most frequent pair first) until each piece is one symbol, in byte-level form."""
    from alice.engine.tokenizer import learn_merges

    return learn_merges(pieces, word_end="")


def qwen_tokenizer(vision_tokens: bool = False) -> Any:
    """Byte-level BPE Qwen2Tokenizer: the 256 byte symbols plus merges for a few words,
    Qwen's special tokens and a chat template; any string tokenizes without unknowns."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # Qwen's pre-tokenizer keeps a word's leading space: " the" is its own piece.
    words = [*WORDS, *QWEN_IMAGE_PIECES]
    merges = _byte_level_merges([*words, *(" " + word for word in words)])
    specials = [*QWEN_SPECIALS, *(QWEN_VISION_SPECIALS if vision_tokens else ())]
    tokens = [*bytes_to_unicode().values(), *(left + right for left, right in merges), *specials]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, model_max_length=T5_TOKENS
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def qwen3(tokenizer: Any, layers: int, causal_lm: bool) -> Any:
    """Qwen3 text model: `Qwen3Model` (Z-Image) or `Qwen3ForCausalLM` (FLUX.2 Klein)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as the real Qwen3
        head_dim=16,
        max_position_embeddings=T5_TOKENS,
        tie_word_embeddings=causal_lm,  # the 4B ties; keeps the tiny LM head out of the file
    )
    return (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config).eval()


def build_tiny_z_image(folder: Path) -> Path:
    """ZImagePipeline: a Qwen3Model (penultimate hidden state) and ZImageTransformer2DModel.

    The transformer patchifies 2x2 itself (`in_channels` 16), and `cap_feat_dim` is the
    Qwen3 hidden size. Its rope axes (frame, row, col) must add up to the head dim.
    """
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    tok = qwen_tokenizer()
    with _seeded():
        pipe = ZImagePipeline(
            scheduler=flow_scheduler(dynamic=False, shift=3.0),  # Turbo: shift 3, no dynamic
            vae=vae_16ch(scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's VAE
            text_encoder=qwen3(tok, layers=2, causal_lm=False),
            tokenizer=tok,
            transformer=ZImageTransformer2DModel(
                all_patch_size=(2,),
                all_f_patch_size=(1,),
                in_channels=16,
                dim=HIDDEN,
                n_layers=1,
                n_refiner_layers=1,  # noise and context refiners, one block each
                n_heads=2,
                n_kv_heads=2,
                cap_feat_dim=HIDDEN,
                axes_dims=[4, 6, 6],  # sum = head dim 16 (real [32, 48, 48] for 128)
                axes_lens=[512, 64, 64],  # rope table lengths: text positions, rows, cols
            ).eval(),
        )
    return _save(pipe, folder)


def build_tiny_flux2_klein(folder: Path) -> Path:
    """Flux2KleinPipeline: a Qwen3ForCausalLM, AutoencoderKLFlux2, Flux2Transformer2DModel.

    Klein stacks the Qwen3 hidden states of layers (9, 18, 27) (the pipeline's default
    `text_encoder_out_layers`), so the tiny Qwen3 keeps 27 layers for the default call to
    work, and the transformer's `joint_attention_dim` is 3 x the Qwen3 hidden size.
    FLUX.2's VAE has 32 latent channels, packed 2x2 into 128; it also keeps a BatchNorm
    over the packed channels whose running stats normalise latents.
    """
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel

    tok = qwen_tokenizer()
    with _seeded():
        pipe = Flux2KleinPipeline(
            scheduler=flow_scheduler(dynamic=True),  # mu comes from compute_empirical_mu
            vae=AutoencoderKLFlux2(
                block_out_channels=(8, 8, 16, 16),  # 4 blocks: the real 8x downscale
                layers_per_block=1,
                latent_channels=32,  # as the real FLUX.2 VAE
                norm_num_groups=4,
                sample_size=64,
            ).eval(),
            text_encoder=qwen3(tok, layers=27, causal_lm=True),
            tokenizer=tok,
            transformer=Flux2Transformer2DModel(
                patch_size=1,
                in_channels=128,  # 32 latent channels x 2x2 packing
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=3 * HIDDEN,  # three stacked Qwen3 layers
                timestep_guidance_channels=32,  # sinusoid width; real 256
                axes_dims_rope=(4, 4, 4, 4),  # FLUX.2 has 4 rope axes (t, h, w, l); sum = head dim
                guidance_embeds=False,  # Klein is step-distilled: no guidance embedder
            ).eval(),
            is_distilled=True,  # as Klein's model_index.json: guidance_scale is then ignored
        )
    return _save(pipe, folder)


def build_tiny_qwen_image(folder: Path) -> Path:
    """QwenImagePipeline: Qwen2.5-VL (last hidden state), AutoencoderKLQwenImage, QwenImageTransformer2DModel.

    The text encoder is the whole vision-language model, as in the real repo (the vision
    tower is unused for text-to-image but is part of the class); both parts are tiny. Its
    multimodal rope splits each head's 16 dims into (time, row, col) = 2 x (2, 3, 3).
    The VAE is Wan's video VAE used on single frames: 16 latent channels, 8x, with
    per-channel latent mean/std the pipeline applies (the class defaults are the real ones).
    """
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = qwen_tokenizer(vision_tokens=True)
    prefix = (  # QwenImagePipeline.prompt_template_encode up to the prompt
        "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text,"
        " spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
    )
    assert len(tok(prefix).input_ids) == 34, "the pipeline drops 34 template tokens"
    ids = {name: tok.convert_tokens_to_ids(name) for name in QWEN_VISION_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2 * T5_TOKENS,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=HIDDEN,  # the merger projects image patches to the text width
            fullatt_block_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with _seeded():
        pipe = QwenImagePipeline(
            scheduler=flow_scheduler(dynamic=True),
            vae=AutoencoderKLQwenImage(
                base_dim=8,  # real 96
                z_dim=16,
                dim_mult=[1, 2, 4, 4],  # 4 stages: 8x spatial, as the real one
                num_res_blocks=1,  # real 2
            ).eval(),
            text_encoder=Qwen2_5_VLForConditionalGeneration(config).eval(),
            tokenizer=tok,
            transformer=QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=64,  # 16 latent channels x 2x2 packing
                out_channels=16,
                num_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=HIDDEN,  # the Qwen2.5-VL hidden size
                axes_dims_rope=(4, 6, 6),  # sum = head dim
            ).eval(),
        )
    return _save(pipe, folder)


BUILDERS = {
    "sd3": build_tiny_sd3,
    "flux": build_tiny_flux,
    "flux-schnell": build_tiny_flux_schnell,
    "chroma": build_tiny_chroma,
    "z-image": build_tiny_z_image,
    "flux2-klein": build_tiny_flux2_klein,
    "qwen-image": build_tiny_qwen_image,
}
