"""Regenerate the architecture folders beside this script: sd15/, sd2/, sdxl/, flux1-schnell/, sd35-medium/.

Each is a diffusers pipeline folder without weights (model_index.json, every component's
config, the scheduler and the tokenizer files) for Stable Diffusion 1.5, 2.1 (768, v-prediction),
SDXL base 1.0, FLUX.1 schnell and Stable Diffusion 3.5 Medium. `from_single_file(file,
config=<folder>, local_files_only=True)` reads the architecture from it instead of the hub, so a
single-file checkpoint converts offline; bench.gpu builds random-weight models from them.

The configs are written out below with the values of the published diffusers repos; every
model is built on the meta device (no memory) and its parameter count checked against the
real model's, so a typo cannot slip through.

The tokenizer's vocab.json and merges.txt are CLIP's own BPE vocabulary (MIT licence,
shared by OpenAI CLIP, OpenCLIP ViT-H (SD 2.x) and ViT-bigG (SDXL)), built from
`bpe_simple_vocab_16e6.txt.gz` exactly as CLIP's SimpleTokenizer builds it. That file comes
from PyPI, inside the open_clip_torch wheel; its hash is checked:

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/wheels
    python alice/configs/build_configs.py --bpe /tmp/wheels/open_clip_torch-3.3.0-py3-none-any.whl

`--bpe` also takes the .txt.gz itself. Without `--bpe` the vocabulary is read back from
sdxl/tokenizer, which an earlier run wrote from that file. The output depends only on these inputs
and the pinned diffusers/transformers versions, so running it again gives the same files.

FLUX.1 and SD 3.5 also take a T5 tokenizer (`T5TokenizerFast`, 512 tokens). T5's own SentencePiece
model cannot be fetched here, so a stand-in is built locally: a `tokenizers` Unigram model with
T5's special tokens at T5's ids (<pad> 0, </s> 1, <unk> 2), 32,000 pieces taken from CLIP's
vocabulary (whole words first, in CLIP's merge order) and T5's 100 sentinel tokens: 32,100 ids,
as the real tokenizer, all within the real embedding's 32,128 rows. It splits prompts into other
ids than the real one, which changes no cost: the pipelines pad T5's input to
`max_sequence_length` whatever the words, so a generation's compute does not depend on them. Its
images would, but these folders only ever get random weights (bench.gpu) or a checkpoint's own
tokenizer files over them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import shutil
import string
import tempfile
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 49152 - 256 - 2  # as CLIP's SimpleTokenizer: 48,894 merges, 49,408 tokens in all
T5_PIECES = 32000  # T5's SentencePiece vocabulary, its 3 special tokens included
T5_SENTINELS = 100  # <extra_id_0> .. <extra_id_99>, after the pieces: 32,100 ids

# ---- components ------------------------------------------------------------------------------

_SCHEDULER_BASE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}

_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

_CLIP_L = {  # openai/clip-vit-large-patch14's text tower: SD 1.x, and SDXL's first encoder
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
}

_TEXT_COMMON = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    # As in the published configs; eos_token_id 2 makes CLIP pool at the highest token id,
    # which is <|endoftext|> (49407) in this vocabulary.
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

_UNET_SD = {
    "act_fn": "silu",
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
}

_VAE_16 = {  # SD3's and FLUX.1's: 16 latent channels and no quant convs
    **_VAE, "latent_channels": 16, "sample_size": 1024, "force_upcast": True,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}

_CLIP_G = {  # OpenCLIP ViT-bigG/14's text tower (SDXL's and SD3's second encoder)
    **_TEXT_COMMON, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
    "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
}

_T5_XXL = {  # google/t5-v1_1-xxl, the text encoder SD3 and FLUX.1 ship (the encoder half only)
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": 32128,
}

_FLOW_SCHEDULER = {"num_train_timesteps": 1000}

# family -> components: (library, class, config, expected parameter count)
FAMILIES: dict[str, dict[str, Any]] = {
    "sd15": {
        "pipeline": {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False},
        "unet": ("diffusers", "UNet2DConditionModel", {
            **_UNET_SD, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64,
            "use_linear_projection": False,
        }, 859_520_964),
        "vae": ("diffusers", "AutoencoderKL", {**_VAE, "sample_size": 512, "scaling_factor": 0.18215}, 83_653_863),
        "text_encoder": ("transformers", "CLIPTextModel", {**_TEXT_COMMON, **_CLIP_L}, 123_060_480),
        "tokenizer": ("transformers", "CLIPTokenizer", {"pad_token": "<|endoftext|>"}, None),
        "scheduler": ("diffusers", "PNDMScheduler", {
            **_SCHEDULER_BASE, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
        }, None),
    },
    "sd2": {  # stabilityai/stable-diffusion-2-1 (768 px, v-prediction), the common SD 2.x base
        "pipeline": {"_class_name": "StableDiffusionPipeline", "requires_safety_checker": False},
        "unet": ("diffusers", "UNet2DConditionModel", {
            **_UNET_SD, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "sample_size": 96,
            "use_linear_projection": True, "upcast_attention": True,
        }, 865_910_724),
        "vae": ("diffusers", "AutoencoderKL", {**_VAE, "sample_size": 768, "scaling_factor": 0.18215}, 83_653_863),
        # OpenCLIP ViT-H/14's text tower less its last layer (SD 2 uses the penultimate one).
        "text_encoder": ("transformers", "CLIPTextModel", {
            **_TEXT_COMMON, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
            "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512,
        }, 340_387_840),
        "tokenizer": ("transformers", "CLIPTokenizer", {"pad_token": "!"}, None),  # OpenCLIP pads with id 0
        "scheduler": ("diffusers", "DDIMScheduler", {
            **_SCHEDULER_BASE, "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False,
        }, None),
    },
    "sdxl": {  # stabilityai/stable-diffusion-xl-base-1.0
        "pipeline": {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True},
        "unet": ("diffusers", "UNet2DConditionModel", {
            **_UNET_SD,
            "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        }, 2_567_463_684),
        "vae": ("diffusers", "AutoencoderKL", {
            **_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True,
        }, 83_653_863),
        "text_encoder": ("transformers", "CLIPTextModel", {**_TEXT_COMMON, **_CLIP_L}, 123_060_480),
        # OpenCLIP ViT-bigG/14's text tower with its projection.
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _CLIP_G, 694_659_840),
        "tokenizer": ("transformers", "CLIPTokenizer", {"pad_token": "<|endoftext|>"}, None),
        "tokenizer_2": ("transformers", "CLIPTokenizer", {"pad_token": "!"}, None),
        "scheduler": ("diffusers", "EulerDiscreteScheduler", {
            **_SCHEDULER_BASE, "prediction_type": "epsilon", "interpolation_type": "linear",
            "timestep_spacing": "leading", "use_karras_sigmas": False,
        }, None),
    },
    "flux1-schnell": {  # black-forest-labs/FLUX.1-schnell (FLUX.1 dev differs by guidance_embeds and scheduler)
        "pipeline": {"_class_name": "FluxPipeline"},
        "transformer": ("diffusers", "FluxTransformer2DModel", {
            "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": False,
            "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
        }, 11_891_178_560),
        "vae": ("diffusers", "AutoencoderKL", {**_VAE_16, "scaling_factor": 0.3611, "shift_factor": 0.1159},
                83_819_683),
        "text_encoder": ("transformers", "CLIPTextModel", {**_TEXT_COMMON, **_CLIP_L}, 123_060_480),
        "text_encoder_2": ("transformers", "T5EncoderModel", _T5_XXL, 4_762_310_656),
        "tokenizer": ("transformers", "CLIPTokenizer", {"pad_token": "<|endoftext|>"}, None),
        "tokenizer_2": ("transformers", "T5TokenizerFast", {}, None),
        # Timestep-distilled for a fixed shift: no resolution-dependent (dynamic) shifting.
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", {
            **_FLOW_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
            "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
        }, None),
    },
    "sd35-medium": {  # stabilityai/stable-diffusion-3.5-medium
        "pipeline": {"_class_name": "StableDiffusion3Pipeline"},
        # 2.24 B parameters, and a 0.23 B position-embedding buffer (384 x 384 positions) beside them.
        "transformer": ("diffusers", "SD3Transformer2DModel", {
            "attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": list(range(13)),
            "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
            "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
            "qk_norm": "rms_norm", "sample_size": 128,
        }, 2_243_171_520),
        "vae": ("diffusers", "AutoencoderKL", {**_VAE_16, "scaling_factor": 1.5305, "shift_factor": 0.0609},
                83_819_683),
        # Both CLIPs with their projections: SD3's pooled vector is the two projections side by side.
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", {**_TEXT_COMMON, **_CLIP_L}, 123_650_304),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _CLIP_G, 694_659_840),
        "text_encoder_3": ("transformers", "T5EncoderModel", _T5_XXL, 4_762_310_656),
        "tokenizer": ("transformers", "CLIPTokenizer", {"pad_token": "<|endoftext|>"}, None),
        "tokenizer_2": ("transformers", "CLIPTokenizer", {"pad_token": "!"}, None),
        "tokenizer_3": ("transformers", "T5TokenizerFast", {}, None),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", {**_FLOW_SCHEDULER, "shift": 3.0}, None),
    },
}


# ---- CLIP's BPE vocabulary ------------------------------------------------------------------


def read_bpe_merges(source: Path) -> list[tuple[str, str]]:
    """The merges of CLIP's BPE file, from the .txt.gz or from a wheel that holds it."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith("/" + BPE_NAME)), None)
            if member is None:
                raise SystemExit(f"{source} holds no {BPE_NAME}")
            data = wheel.read(member)
    else:
        data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_SHA256:
        raise SystemExit(f"{BPE_NAME} has sha256 {digest}, expected {BPE_SHA256}")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # line 0 is a version header


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte symbols in CLIP's order: printable bytes first, then the rest mapped past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(rest))]


def clip_vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49408, len(vocab)
    return vocab


def write_tokenizer(folder: Path, vocab_json: str, merges_txt: str, pad_token: str) -> None:
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(vocab_json, encoding="utf-8")
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    _write_json(folder / "tokenizer_config.json", config)


# ---- the T5 tokenizer's stand-in --------------------------------------------------------------


def t5_pieces(clip_vocab: dict[str, int]) -> list[tuple[str, float]]:
    """A Unigram vocabulary of T5's shape: its special tokens at its ids, the word-start marker,
    single characters, then CLIP's ASCII words (as word starts) and word pieces in CLIP's merge
    order (the more frequent merged first), scored so a whole word beats any split of it."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -12.0)]
    pieces += [(ch, -12.0) for ch in string.ascii_letters + string.digits + string.punctuation]
    seen = {piece for piece, _ in pieces}
    for token in sorted(clip_vocab, key=clip_vocab.__getitem__):
        word = token.removesuffix("</w>")
        if not word.isascii() or not word.isalnum():
            continue
        piece = "\u2581" + word if token.endswith("</w>") else word
        if piece in seen:
            continue
        seen.add(piece)
        pieces.append((piece, round(-math.log(len(pieces)), 4)))
        if len(pieces) == T5_PIECES:
            break
    assert len(pieces) == T5_PIECES, len(pieces)
    return pieces


def write_t5_tokenizer(folder: Path, pieces: list[tuple[str, float]]) -> None:
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=T5_SENTINELS, model_max_length=512)
    assert len(tokenizer) == T5_PIECES + T5_SENTINELS <= _T5_XXL["vocab_size"], len(tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        folder.mkdir(parents=True)
        # tokenizers writes tokenizer.json indented: one line per field of 32,100 tokens, 1.7 MB.
        compact = json.loads((Path(scratch) / "tokenizer.json").read_text(encoding="utf-8"))
        (folder / "tokenizer.json").write_text(
            json.dumps(compact, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
        _write_json(folder / "tokenizer_config.json",
                    json.loads((Path(scratch) / "tokenizer_config.json").read_text(encoding="utf-8")))


# ---- writing and checking -------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _diffusers_config(config: Any, class_name: str) -> dict[str, Any]:
    import diffusers

    settings = {key: value for key, value in config.items() if not key.startswith("_")}
    return {**settings, "_class_name": class_name, "_diffusers_version": diffusers.__version__}


def _build_on_meta(library: str, class_name: str, config: dict[str, Any]) -> Any:
    import diffusers
    import torch
    import transformers

    with torch.device("meta"):
        if library == "diffusers":
            return getattr(diffusers, class_name).from_config(config)
        config_class = transformers.T5Config if class_name.startswith("T5") else transformers.CLIPTextConfig
        return getattr(transformers, class_name)(config_class(**config))


def write_family(
    family: str, components: dict[str, Any], vocab_json: str, merges_txt: str, t5: list[tuple[str, float]]
) -> None:
    import diffusers
    import transformers

    folder = HERE / family
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    index: dict[str, Any] = {
        **components["pipeline"],
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
    }
    if components["pipeline"]["_class_name"] == "StableDiffusionPipeline":
        index["safety_checker"] = [None, None]
    parts = {name: part for name, part in components.items() if name != "pipeline"}
    for name, (library, class_name, config, expected_parameters) in parts.items():
        index[name] = [library, class_name]
        target = folder / name
        if class_name == "CLIPTokenizer":
            write_tokenizer(target, vocab_json, merges_txt, config["pad_token"])
        elif class_name == "T5TokenizerFast":
            write_t5_tokenizer(target, t5)
        elif name == "scheduler":
            target.mkdir()
            scheduler = getattr(diffusers, class_name).from_config(config)
            _write_json(target / "scheduler_config.json", _diffusers_config(scheduler.config, class_name))
        else:
            model = _build_on_meta(library, class_name, config)
            parameters = sum(p.numel() for p in model.parameters())
            if parameters != expected_parameters:
                raise SystemExit(f"{family}/{name}: {parameters:,} parameters, the real model has {expected_parameters:,}")
            target.mkdir()
            if library == "diffusers":  # every setting spelled out, defaults included
                _write_json(target / "config.json", _diffusers_config(model.config, class_name))
            else:
                _write_json(target / "config.json", {
                    **config, "model_type": "t5" if class_name.startswith("T5") else "clip_text_model",
                    "architectures": [class_name], "transformers_version": transformers.__version__,
                })
    _write_json(folder / "model_index.json", index)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{family}: {folder} ({size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, help=f"{BPE_NAME} or an open_clip_torch wheel "
                        "(default: the vocabulary already in sdxl/tokenizer, which this script wrote from it)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="which folders to write, comma-separated")
    args = parser.parse_args()
    if args.bpe:
        merges = read_bpe_merges(args.bpe)
        vocab_json = json.dumps(clip_vocabulary(merges), ensure_ascii=False, separators=(",", ":"))
        merges_txt = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges)
    else:  # read before sdxl/ is rewritten
        vocab_json = (HERE / "sdxl" / "tokenizer" / "vocab.json").read_text(encoding="utf-8")
        merges_txt = (HERE / "sdxl" / "tokenizer" / "merges.txt").read_text(encoding="utf-8")
    t5 = t5_pieces(json.loads(vocab_json))
    for family in args.families.split(","):
        write_family(family, FAMILIES[family], vocab_json, merges_txt, t5)


if __name__ == "__main__":
    main()
