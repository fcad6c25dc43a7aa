"""NF4 transformers (bitsandbytes) and text encoders run on the CPU beside a card, on tiny FLUX.1.

This machine has no GPU: diffusers' bitsandbytes quantizer refuses to start without one, so the
NF4 tests stand in a GPU for that check alone (`validate_environment`), and take bitsandbytes'
generic CPU path (its AVX512-bf16 path packs weights in blocks wider than the tiny model's 32
inputs). The weights are quantized and dequantized by bitsandbytes itself. Images: 64x64, 2 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from alice.cli import app
from alice.engine.device import MemoryPreset
from alice.engine.model_sizes import preset_inputs
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.presets import PresetDoesNotFit, layout_parts
from alice.engine.relayout import relayout
from alice.engine.transformer_files import TRANSFORMER, is_nf4_folder, transformer_from_file
from alice.models import checkpoints
from alice.models import store as model_store

# Measured on this CPU, tiny FLUX.1 dev, seed 0, "a red circle", 64x64, 2 steps: NF4 35.4 dB from the
# fp32 model's image (GGUF Q4_0 drew 39.1 dB at 4 steps: test_transformer_files.py); the text
# encoders on the CPU in bf16 beside an fp16 pipeline 68.5 dB from all in fp16. The bounds leave
# 7 dB and more: wrong scales, a transposed block or a wrong dtype hand-over draw noise, under 15 dB.
NF4_PSNR = 28.0
TEXT_CPU_PSNR = 55.0
# A quantized T5 in place of the 16-bit one (the tiny T5 counts little in the image): Q8_0 GGUF 89.5 dB,
# NF4 57.5 dB measured.
T5_GGUF_PSNR = 70.0
T5_NF4_PSNR = 45.0
ENCODERS = ("text_encoder", "text_encoder_2")


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((reference - image) ** 2), 1e-20)))


def draw(pipe) -> np.ndarray:
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image, dtype=np.float64)


@pytest.fixture(scope="module")
def flux(tiny_family: Callable[[str], Path]) -> Path:
    return tiny_family("flux")


@pytest.fixture
def gpu_for_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    monkeypatch.setattr(BnB4BitDiffusersQuantizer, "validate_environment", lambda self, *a, **k: None)


def generic_cpu_path(model: torch.nn.Module) -> int:
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def test_a_transformer_quantized_to_nf4_at_load_draws_close_to_16_bits(
    flux: Path, gpu_for_bitsandbytes: None, bentoml_home: Path, tmp_path: Path
) -> None:
    import diffusers

    reference = draw(diffusers.FluxPipeline.from_pretrained(str(flux), dtype=torch.float32))
    loaded = transformer_from_file(flux, torch.float32, quantize="nf4", device="cpu")
    transformer = loaded[TRANSFORMER]
    linears = [m for m in transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert generic_cpu_path(transformer) == len(linears) == 30  # every Linear (diffusers keeps none out here)
    assert transformer.proj_out.weight.dtype == torch.uint8  # two 4-bit weights a byte
    pipe = diffusers.FluxPipeline.from_pretrained(str(flux), dtype=torch.float32, **loaded)
    measured = psnr(reference, draw(pipe))
    assert measured >= NF4_PSNR, f"NF4 drew {measured:.1f} dB from the fp32 image"
    assert measured < 80  # it is quantized: not the same image

    # Saved as diffusers saves it, the folder imports onto a stored base (`--base`, as a GGUF does) and
    # reads as NF4 for the planner, at its stored size; on this CPU it is refused before any weight is read.
    saved = tmp_path / "flux-nf4-transformer"
    transformer.save_pretrained(str(saved))
    assert is_nf4_folder(saved) and not is_nf4_folder(flux / TRANSFORMER)
    checkpoints.import_pipeline_folder(flux, "flux-base")
    result = CliRunner().invoke(app, ["models", "import", str(saved), "--name", "flux-nf4", "--base", "flux-base"])
    assert result.exit_code == 0, result.output
    stored = model_store.get_model("flux-nf4")
    inputs, unquantized = preset_inputs(stored.path, "flux1-dev"), preset_inputs(flux, "flux1-dev")
    assert inputs.quantized == "nf4" and inputs.transformer_bytes < unquantized.transformer_bytes
    assert inputs.transformer_params == unquantized.transformer_params  # two weights a byte, the state left out
    with pytest.raises(PresetDoesNotFit, match="NF4 .bitsandbytes. needs a CUDA card of compute capability 6.0"):
        load_pipeline(stored.path, choose_placement("cpu"))

    # Forge's single-file NF4 (packed weights and their state in one .safetensors) is refused, saying what loads.
    forge = tmp_path / "flux-bnb-nf4.safetensors"
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(forge))
    with pytest.raises(ValueError, match="bitsandbytes NF4/FP4 weights in one file .as Forge's flux1-dev-bnb-nf4.: "
                                         "diffusers 0.42.1 converts no single file"):
        checkpoints.import_checkpoint_file(forge, "forge", base="flux-base")
    with pytest.raises(ValueError, match="bitsandbytes NF4/FP4 weights in one file"):
        checkpoints.import_checkpoint_file(forge, "forge")  # without --base, as a whole checkpoint would come


def test_nf4_of_a_gguf_is_refused(flux: Path, tmp_path: Path) -> None:
    from alice.engine.transformer_files import load_nf4_transformer

    with pytest.raises(ValueError, match="quantized already"):
        load_nf4_transformer(flux, tmp_path / "flux-q4.gguf", torch.float32, "cpu")


def preset(parts: tuple[tuple[str, str], ...]) -> MemoryPreset:
    return MemoryPreset(family="flux1-dev", cpu_offload="none", vae_tiling_above=None, attention_slicing=False,
                        channels_last=False, parts=parts, dtype="float16")


def test_text_encoders_on_the_cpu_run_in_bf16_and_hand_the_card_its_dtype(flux: Path) -> None:
    """The text-cpu layout beside an fp16 card, on this CPU standing in for the card (the same
    device, so what is checked is each part's dtype, the hand-over, and the image)."""
    placement = choose_placement("cpu", "float16")
    whole = load_pipeline(flux, placement, preset=preset(layout_parts(ENCODERS, "gpu")))
    reference = draw(whole)
    text_cpu = preset(layout_parts(ENCODERS, "text-cpu"))
    assert dict(text_cpu.parts) == {"transformer": "gpu", "text_encoder": "cpu", "text_encoder_2": "cpu", "vae": "gpu"}
    pipe = load_pipeline(flux, placement, preset=text_cpu)
    t5 = pipe.text_encoder_2
    assert {p.dtype for p in t5.parameters()} == {torch.bfloat16} and t5.device.type == "cpu"
    assert t5.dtype == torch.float16 and type(t5).__name__ == "T5EncoderModel"  # what the pipeline casts to
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float16}
    ids = pipe.tokenizer_2(["a red circle"], return_tensors="pt").input_ids
    assert t5(ids)[0].dtype == torch.float16  # handed over in the card's dtype
    measured = psnr(reference, draw(pipe))
    assert TEXT_CPU_PSNR <= measured < 100, f"text encoders in bf16 drew {measured:.1f} dB from all in fp16"

    # Laid out again (after running out of memory, or back), the encoders are ordinary fp16 modules.
    relayout(pipe, replace(text_cpu, parts=layout_parts(ENCODERS, "gpu")), "cpu")
    assert {p.dtype for p in t5.parameters()} == {torch.float16} and type(t5).__module__.startswith("transformers")
    assert not t5._forward_hooks and not t5._forward_pre_hooks
    # Nearly the image all in fp16 drew: the encoders' weights went through bf16 and back.
    assert psnr(reference, draw(pipe)) > 60


# -- a quantized T5 in place of the base's ------------------------------------------------------------
def write_t5_gguf(component: Path, out: Path, quant: str = "Q8_0") -> Path:
    """A GGUF of a T5 encoder as llama.cpp's converter writes city96's files: architecture
    `t5encoder`, gguf-py's tensor names (`enc.blk.0.attn_q.weight`, `token_embd.weight`), 2-D
    weights quantized, norms in F32."""
    import gguf
    from transformers import T5EncoderModel
    from transformers.modeling_gguf_pytorch_utils import T5TensorProcessor, get_gguf_hf_weights_map

    model = T5EncoderModel.from_pretrained(str(component))
    names = {hf: name for name, hf in get_gguf_hf_weights_map(model, T5TensorProcessor(), model_type="t5").items()}
    config, qtype = model.config, gguf.GGMLQuantizationType[quant]
    writer = gguf.GGUFWriter(str(out), arch="t5encoder")
    for key, value in {"block_count": config.num_layers, "embedding_length": config.d_model,
                       "feed_forward_length": config.d_ff, "attention.head_count": config.num_heads,
                       "attention.key_length": config.d_kv, "attention.value_length": config.d_kv,
                       "attention.relative_buckets_count": config.relative_attention_num_buckets,
                       "context_length": 512}.items():
        writer.add_uint32(f"t5encoder.{key}", value)
    writer.add_float32("t5encoder.attention.layer_norm_epsilon", config.layer_norm_epsilon)
    for name, tensor in model.state_dict().items():
        if name not in names:  # encoder.embed_tokens: the same tensor as `shared`
            continue
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            quantized = gguf.quants.quantize(array, qtype)
            writer.add_tensor(names[name], quantized, raw_shape=quantized.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(names[name], array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_a_gguf_or_nf4_t5_onto_a_stored_flux_draws_close_to_its_16_bit_t5(
    bentoml_home: Path, flux: Path, tmp_path: Path
) -> None:
    base = checkpoints.import_pipeline_folder(flux, "flux-base")
    file = write_t5_gguf(flux / "text_encoder_2", tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    stored = checkpoints.import_checkpoint_file(file, "flux-t5q8", base="flux-base")  # told apart by the file
    assert sorted(p.name for p in (stored.path / "text_encoder_2").iterdir()) == ["config.json", file.name]
    assert (stored.path / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_ino == \
        (base.path / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_ino  # linked, not copied
    reference = draw(load_pipeline(base.path, choose_placement("cpu")))
    pipe = load_pipeline(stored.path, choose_placement("cpu"))
    # Dequantized as it loads: the GGUF saved disk, not memory (the planner counts 16 bits).
    assert {p.dtype for p in pipe.text_encoder_2.parameters()} == {torch.float32}
    assert preset_inputs(stored.path, "flux1-dev").text_encoders["text_encoder_2"] > 9e9
    measured = psnr(reference, draw(pipe))
    assert T5_GGUF_PSNR <= measured < 100, f"the Q8_0 T5 drew {measured:.1f} dB from the 16-bit T5's image"

    with pytest.raises(ValueError, match="holds a T5 text encoder alone"):
        checkpoints.import_checkpoint_file(file, "no-base")

    # A T5 quantized to NF4 by transformers' BitsAndBytesConfig and saved: a folder onto the same base,
    # kept in NF4 (bitsandbytes runs on the CPU through transformers; the tiny T5 takes its generic path).
    from transformers import BitsAndBytesConfig, T5EncoderModel

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    T5EncoderModel.from_pretrained(str(flux / "text_encoder_2"), quantization_config=config, device_map={"": "cpu"}) \
        .save_pretrained(str(tmp_path / "t5-nf4"))
    result = CliRunner().invoke(app, ["models", "import", str(tmp_path / "t5-nf4"), "--name", "flux-t5nf4",
                                      "--base", "flux-base"])
    assert result.exit_code == 0, result.output
    pipe = load_pipeline(model_store.get_model("flux-t5nf4").path, choose_placement("cpu"))
    assert generic_cpu_path(pipe.text_encoder_2) == 12  # its Linear layers stayed NF4
    measured = psnr(reference, draw(pipe))
    assert T5_NF4_PSNR <= measured < 100, f"the NF4 T5 drew {measured:.1f} dB from the 16-bit T5's image"
