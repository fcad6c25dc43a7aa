"""Sizes of the transformer families' parts, for the memory presets (alice/engine/presets.py).

Torch-free figures, in bytes of 16-bit weights (GB = 10^9). Where a figure comes from:
/work/shared/families.md §2 (parameter counts read off the classes built on the meta device,
2 bytes each) and §5 (GGUF file sizes as listed on their Hugging Face pages). The working
memory of a transformer step is arithmetic, not a measurement (see `transformer_working`),
with the same margin as the UNet families' measured figures (alice/engine/device.py): nothing
here has been checked on a card yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alice.engine.device import MARGIN

GB = 10**9
# Text encoders (families.md §2, "Text encoders"), 16-bit bytes, and each one's largest layer,
# its token embedding (vocabulary x width x 2 bytes): the part streamed offload moves in one piece,
# and the part fp8 storage leaves in 16 bits (diffusers' layerwise casting casts Linear and Conv
# layers only).
CLIP_L = int(0.25 * GB)  # 123M; embedding 49408 x 768
CLIP_G = int(1.39 * GB)  # 695M; embedding 49408 x 1280
T5_XXL = int(9.52 * GB)  # 4.76B; embedding 32128 x 4096
# T5's `wo` layers, which transformers keeps in fp32 under fp16 (`_keep_in_fp32_modules`): 24 x 10240 x 4096.
T5_WO_PARAMS = 24 * 10240 * 4096
QWEN3_4B = int(8.04 * GB)  # 4.02B; embedding 151936 x 2560
QWEN3_8B = int(16.4 * GB)  # 8.19B; embedding 151936 x 4096
QWEN25_VL_7B = int(16.6 * GB)  # 8.29B (vision tower included); embedding 152064 x 3584
EMBEDDING = {
    CLIP_L: 49408 * 768 * 2,
    CLIP_G: 49408 * 1280 * 2,
    T5_XXL: 32128 * 4096 * 2,
    QWEN3_4B: 151936 * 2560 * 2,
    QWEN3_8B: 151936 * 4096 * 2,
    QWEN25_VL_7B: 152064 * 3584 * 2,
}
# The 16-latent-channel AutoencoderKL of SD3, FLUX.1, Chroma and Z-Image has SD's decoder widths
# (84M parameters); FLUX.2's and Qwen-Image's VAEs are taken as the same size: unverified.
VAE = int(0.17 * GB)


@dataclass(frozen=True)
class FamilyFigures:
    """What the presets need to know about one family's reference checkpoint."""

    transformer_params: int  # the released transformer's parameters (families.md §2)
    text_encoders: dict[str, int]  # pipeline component name -> 16-bit bytes
    width: int  # the transformer's hidden size (heads x head dim)
    text_tokens: int  # the text sequence the image tokens attend with (default max_sequence_length)
    cfg_batch: int  # 2 where the family's default runs true classifier-free guidance
    # Largest transformer block / all its weights, by the block layout in families.md §2 (d = width):
    # a joint block is 18 d^2 per stream (qkv 3, out 1, MLP 8, modulation 6).
    block_share: float
    # Weights outside the blocks (embedders, output layers, position buffers): they stay on the card
    # for the whole forward under group offload.
    rest_share: float = 0.02
    mlp_ratio: float = 4.0
    # diffusers clips fp16 activations in this transformer (families.md §7.1); without it fp16 is
    # untested (SD3, Z-Image).
    fp16_clipped: bool = True
    # GGUF files published for it, name -> GB (families.md §5); the no-fit error names them.
    gguf: dict[str, float] = field(default_factory=dict)

    @property
    def transformer(self) -> int:
        return 2 * self.transformer_params


FLUX1_GGUF = {"Q8_0": 12.7, "Q6_K": 9.86, "Q5_K_S": 8.29, "Q4_K_S": 6.81, "Q4_0": 6.79, "Q3_K_S": 5.23, "Q2_K": 4.03}
FAMILY_FIGURES: dict[str, FamilyFigures] = {
    # SD 3.5 Medium as the reference (2.47B with its 0.23B position buffer); a 3.5 Large (8.15B) is
    # told apart by the parameter count the caller gives (see `sd3_width`). Two joint streams of
    # 36 d^2 + a dual-attention layer: 94M of 2.47B. The position buffer is a tenth of Medium.
    "sd3": FamilyFigures(
        transformer_params=int(2.47e9),
        text_encoders={"text_encoder": CLIP_L, "text_encoder_2": CLIP_G, "text_encoder_3": T5_XXL},
        width=1536, text_tokens=77 + 256, cfg_batch=2, block_share=0.04, rest_share=0.10,
        fp16_clipped=False,
        gguf={"Q8_0": 2.86, "Q6_K": 2.32, "Q5_K_M": 2.07, "Q4_0": 1.74, "Q3_K_S": 1.45},
    ),
    # 19 double (36 d^2 = 340M) + 38 single blocks; guidance-distilled: no CFG batch.
    "flux1-dev": FamilyFigures(
        transformer_params=int(11.90e9), text_encoders={"text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
        width=3072, text_tokens=512, cfg_batch=1, block_share=0.029, gguf=FLUX1_GGUF,
    ),
    "flux1-schnell": FamilyFigures(
        transformer_params=int(11.89e9), text_encoders={"text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
        width=3072, text_tokens=256, cfg_batch=1, block_share=0.029,
        gguf={"Q8_0": 12.7, "Q5_K_S": 8.26, "Q4_K_S": 6.78, "Q4_0": 6.77, "Q2_K": 4.01},
    ),
    # FLUX.1's blocks without per-block modulation (24 d^2 = 226M of 8.9B); real CFG at guidance > 1.
    "chroma": FamilyFigures(
        transformer_params=int(8.90e9), text_encoders={"text_encoder": T5_XXL},
        width=3072, text_tokens=512, cfg_batch=2, block_share=0.026,
    ),
    # 30 layers plus refiners at width 3840; CFG runs whenever guidance > 0 (families.md §7.9).
    # mlp_ratio 4 is an upper bound, not read from its config.
    "zimage": FamilyFigures(
        transformer_params=int(6.15e9), text_encoders={"text_encoder": QWEN3_4B},
        width=3840, text_tokens=512, cfg_batch=2, block_share=0.035, fp16_clipped=False,
    ),
    # The 4B as the reference (its block split is unverified): a double block of 26 d^2 (shared
    # modulation, SwiGLU MLP ratio 3) is 245M of 3.88B. A 9B (width 4096, Qwen3-8B) is told apart
    # by the parameter count; its text encoder's bytes come from the caller.
    "flux2-klein": FamilyFigures(
        transformer_params=int(3.88e9), text_encoders={"text_encoder": QWEN3_4B},
        width=3072, text_tokens=512, cfg_batch=1, block_share=0.065, mlp_ratio=3.0,
    ),
    # 60 dual-stream blocks of 36 d^2 (340M of 20.4B); true CFG with a negative prompt.
    "qwen-image": FamilyFigures(
        transformer_params=int(20.43e9), text_encoders={"text_encoder": QWEN25_VL_7B},
        width=3072, text_tokens=512, cfg_batch=2, block_share=0.017,
    ),
}
TRANSFORMER_FAMILIES = tuple(FAMILY_FIGURES)

# GGUF keeps each tensor quantized on the card and dequantizes one layer per forward to the compute
# dtype (families.md §7.4): the largest Linear of these transformers is under 50M weights (FLUX's
# single-block output layer, 15360 x 3072), 0.1 GB in 16 bits.
DEQUANTIZED_LAYER = int(0.1 * GB)
# Bits a weight of a GGUF Q4_0 file takes, from FLUX.1-dev's: 6.79 GB for 11.9B weights (4.5 bits
# and the unquantized norms and embedders); the no-fit error's estimate where no file is listed.
Q4_0_BYTES_PER_PARAM = 6.79e9 / 11.9e9
# A transformer quantized to NF4 by bitsandbytes (diffusers' BitsAndBytesConfig, 4-bit, no double
# quantization): each Linear weight 4 bits plus one float32 absmax per block of 64 weights, 4.5
# bits or 0.5625 bytes (bitsandbytes' blockwise layout; Linear4bit(3072, 3072) holds 5.31 MB for
# 9.44M weights). The norms and embedders stay 16-bit: under 1 % of these transformers.
# Forge's flux1-dev-bnb-nf4 transformer, ~6.7 GB for 11.9B weights, is the same ratio.
NF4_BYTES_PER_PARAM = 0.5625


def width_for(family: str, params: int) -> int:
    """The transformer's width: SD 3.5 Large (8.15B, 38 x 64) and FLUX.2 Klein 9B (32 x 128) are
    wider than their family's reference."""
    if family == "sd3" and params > 4e9:
        return 2432
    if family == "flux2-klein" and params > 6e9:
        return 4096
    return FAMILY_FIGURES[family].width


def transformer_working(family: str, params: int, pixels: int, bytes_per_value: int = 2) -> int:
    """Card memory one transformer step needs beyond its weights, for images of `pixels`.

    Arithmetic, not a measurement: every family here has an 8x VAE and 2x2 patches, so an image
    has pixels / 256 tokens, joined by the text tokens. A block holds about (2 x mlp_ratio + 6)
    activations of the sequence's width at once (input, q/k/v, attention output, the MLP's hidden
    and activated tensors); SDPA's memory-efficient kernels keep attention linear in the sequence.
    Times the CFG batch, and MARGIN as for the SD figures (allocator, workspaces). The UNet
    families' working memory is measured (bench/memory.py); this is not: a transformer block's
    activations by this count, not by an allocator's peak.
    """
    figures = FAMILY_FIGURES[family]
    tokens = pixels / 256 + figures.text_tokens
    per_token = (2 * figures.mlp_ratio + 6) * width_for(family, params) * bytes_per_value
    return int(MARGIN * figures.cfg_batch * tokens * per_token)
