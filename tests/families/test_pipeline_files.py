"""Single files in the names real ones use: all-in-one FLUX.1 and Z-Image checkpoints (ComfyUI's
layout: transformer, VAE, text encoders in one file) and BFL-named FLUX.1 transformers, written
from the tiny pipelines (tests/families/original_layouts.py), imported, and drawn bit for bit as
the pipeline they were written from; and transformer-only files checked from their header.

What the tiny files cover: every key diffusers 0.42.1 maps for FLUX.1 (transformer, LDM VAE,
CLIP-L, T5), Chroma (transformer, VAE, T5), SD3 (MMDiT transformer, VAE, CLIP-L, T5) and
Z-Image (transformer, VAE), run through ALICE's import and loader. The FLUX.1 and Chroma
transformer converters run with FLUX.1's width constant (3072) swapped for the tiny width, as
only that constant keeps a tiny BFL file from converting; the real width is exercised by the
header check of a real-sized FLUX.1 file (sparse, never read). Not covered: SD3's CLIP-G read
from a file (diffusers tells SD3's CLIPs apart by width; the tiny ones are alike), the shipped
SD 3.5 Medium configs with a file (real-sized), float8 transformers.
Images are 64x64, 2 steps, fp32 on the CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from alice.cli import app
from alice.engine import pipeline_files
from alice.engine.folder_check import FolderDoesNotLoad
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.single_file import CONFIGS
from alice.engine.transformer_files import check_transformer_file
from alice.models import checkpoints
from alice.models import store as model_store
from tests.families.original_layouts import flux_converter_at_tiny_width, flux_to_bfl, write_all_in_one
from tests.support import one_torch_thread

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
runner = CliRunner()


# Guidance 1: one transformer pass a step, no negative prompt encoded (SD3, Chroma, Z-Image run
# CFG above 1). What is compared is the weights each image is drawn with.
DRAWING = {"prompt": "a red circle", "num_inference_steps": 2, "height": 64, "width": 64, "guidance_scale": 1.0,
           "output_type": "np"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def draw(folder: Path) -> np.ndarray:
    pipe = load_pipeline(folder, choose_placement("cpu"))
    return np.asarray(pipe(**DRAWING, generator=torch.Generator().manual_seed(0)).images[0])


@pytest.fixture(scope="module")
def flux(tiny_family: Callable[[str], Path]) -> Path:
    return tiny_family("flux")  # FLUX.1 dev


@pytest.fixture(scope="module")
def reference(flux: Path) -> np.ndarray:
    return draw(flux)


@pytest.fixture(scope="module")
def files(flux: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny FLUX.1 dev as the single files of the wild, written once."""
    root = tmp_path_factory.mktemp("flux-files")
    state = load_file(str(flux / WEIGHTS))
    save_file(flux_to_bfl(state), str(root / "flux1-dev-bfl.safetensors"))
    return {
        "whole": write_all_in_one(flux, root / "flux1-dev-aio.safetensors", "flux"),
        "no-t5": write_all_in_one(flux, root / "flux1-dev-no-t5.safetensors", "flux",
                                  parts=("transformer", "vae", "clip_l")),
        "bfl": root / "flux1-dev-bfl.safetensors",
    }


@pytest.fixture
def base(bentoml_home: Path, flux: Path) -> model_store.StoredModel:
    return checkpoints.import_pipeline_folder(flux, "flux-base")


def test_flux_all_in_one_file_is_stored_as_a_folder_and_draws_as_its_pipeline(
    bentoml_home: Path, flux: Path, files: dict[str, Path], reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped FLUX.1 configs stand for the tiny pipeline's (the real ones describe 12B weights).
    monkeypatch.setitem(pipeline_files.SHIPPED_CONFIGS, "flux1-dev", flux)
    with flux_converter_at_tiny_width():
        result = runner.invoke(app, ["models", "import", str(files["whole"]), "--name", "aio"])
    assert result.exit_code == 0, result.output
    stored = model_store.get_model("aio")
    assert (stored.kind, stored.family) == ("pipeline", "flux1-dev")
    assert (stored.path / "text_encoder_2" / "model.safetensors").is_file()  # its own T5, a diffusers folder
    assert np.array_equal(draw(stored.path), reference)  # bit for bit


def test_a_file_without_t5_says_which_base_would_give_it(
    base: model_store.StoredModel, files: dict[str, Path]
) -> None:
    result = runner.invoke(app, ["models", "import", str(files["no-t5"]), "--name", "no-t5"])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "flux1-dev-no-t5.safetensors is a flux1-dev checkpoint without its text_encoder_2 (T5 text encoder)" in message
    assert "`alice models import flux1-dev-no-t5.safetensors --name N --base <a stored flux1-dev or" in message
    assert "(stored flux1-dev or flux1-schnell models: flux-base)" in message
    assert [m.name for m in model_store.list_models()] == ["flux-base"]


def test_t5_missing_or_in_float8_is_taken_from_the_base(
    base: model_store.StoredModel, files: dict[str, Path], tmp_path: Path, reference: np.ndarray
) -> None:
    t5 = Path("text_encoder_2") / "model.safetensors"
    state = load_file(str(files["whole"]))
    file = tmp_path / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) if k.startswith("text_encoders.t5xxl.") else v
               for k, v in state.items()}, str(file))  # as "fp8" FLUX files ship T5
    with flux_converter_at_tiny_width():
        stored = checkpoints.import_checkpoint_file(file, "fp8", base="flux-base")
        without = checkpoints.import_checkpoint_file(files["no-t5"], "no-t5", base="flux-base")
    for model in (stored, without):
        assert (model.path / t5).stat().st_ino == (base.path / t5).stat().st_ino  # the base's file, linked
        assert (model.path / "vae" / "diffusion_pytorch_model.safetensors").stat().st_nlink == 1  # the file's own
    assert np.array_equal(draw(stored.path), reference)  # an upcast fp8 T5 would not draw the same


def test_z_image_all_in_one_takes_its_text_encoder_from_a_base(
    bentoml_home: Path, tiny_family: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = tiny_family("z-image")
    file = write_all_in_one(folder, tmp_path / "z-image-aio.safetensors", "zimage")
    with pytest.raises(ValueError, match=r"is a zimage checkpoint without its text_encoder \(text encoder\)"):
        checkpoints.import_checkpoint_file(file, "z")  # diffusers reads no Qwen3 from a single file
    checkpoints.import_pipeline_folder(folder, "z-base")
    stored = checkpoints.import_checkpoint_file(file, "z", base="z-base")
    assert stored.family == "zimage"
    assert np.array_equal(draw(stored.path), draw(folder))


def test_chroma_all_in_one_converts_with_a_base_s_configs(
    bentoml_home: Path, tiny_family: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = tiny_family("chroma")
    file = write_all_in_one(folder, tmp_path / "chroma-aio.safetensors", "chroma")  # BFL-named, T5, VAE
    with pytest.raises(ValueError, match=r"chroma-aio.safetensors is a chroma checkpoint without its configs "
                                         r"\(ALICE ships none for chroma\)"):
        checkpoints.import_checkpoint_file(file, "chroma-aio")
    checkpoints.import_pipeline_folder(folder, "chroma-base")
    with flux_converter_at_tiny_width():  # Chroma's converter hard-codes FLUX.1's width too
        stored = checkpoints.import_checkpoint_file(file, "chroma-aio", base="chroma-base")
    assert not any(p.stat().st_nlink > 1 for p in stored.path.rglob("*.safetensors"))  # all its own
    assert np.array_equal(draw(stored.path), draw(folder))


def test_sd3_all_in_one_draws_as_its_pipeline_with_diffusers_clip_l_projection(
    bentoml_home: Path, tiny_family: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = tiny_family("sd3")
    # No CLIP-G: diffusers tells SD3's two CLIPs apart by width, and the tiny ones are both 32
    # wide; it comes from the base. MMDiT-named transformer, VAE, CLIP-L and T5 from the file.
    file = write_all_in_one(folder, tmp_path / "sd35-aio.safetensors", "sd3",
                            parts=("transformer", "vae", "clip_l", "t5xxl"))
    checkpoints.import_pipeline_folder(folder, "sd3-base")
    stored = checkpoints.import_checkpoint_file(file, "sd3-aio", base="sd3-base")
    assert stored.family == "sd3"
    # diffusers gives SD3's CLIP-L an identity projection (the files carry none it reads), as
    # SD3 pools CLIP-L unprojected: the drawing is the tiny pipeline's with that projection.
    pipe = load_pipeline(folder, choose_placement("cpu"))
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
    expected = pipe(**DRAWING, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(draw(stored.path), np.asarray(expected))


def test_bfl_named_transformer_file_draws_as_the_diffusers_named_one(
    base: model_store.StoredModel, files: dict[str, Path], reference: np.ndarray
) -> None:
    # diffusers' converter as it is: FLUX.1's width, which the tiny file has not. The import says so.
    with pytest.raises(ValueError, match=r"does not load as a flux1-dev transformer.*split_sizes=\[3072, 3072, 3072, 12288\]"):
        checkpoints.import_checkpoint_file(files["bfl"], "bfl", base="flux-base")
    with flux_converter_at_tiny_width():
        stored = checkpoints.import_checkpoint_file(files["bfl"], "bfl", base="flux-base")
        assert (stored.path / "transformer" / files["bfl"].name).is_file()  # kept as given
        assert np.array_equal(draw(stored.path), reference)


def test_all_in_one_files_that_do_not_fit_are_refused(
    base: model_store.StoredModel, tiny_family: Callable[[str], Path], files: dict[str, Path], tmp_path: Path
) -> None:
    checkpoints.import_pipeline_folder(tiny_family("chroma"), "chroma")
    with pytest.raises(ValueError, match="holds a flux1-dev transformer, but chroma is a chroma model"):
        checkpoints.import_checkpoint_file(files["no-t5"], "mixed", base="chroma")
    state = load_file(str(files["whole"]))
    state["vae.decoder.conv_in.weight"] = state["vae.decoder.conv_in.weight"][:, :8].contiguous()  # another size
    save_file(state, str(tmp_path / "odd.safetensors"))
    with flux_converter_at_tiny_width(), pytest.raises(
            ValueError, match="odd.safetensors does not convert as a flux1-dev checkpoint with flux-base's configs"):
        checkpoints.import_checkpoint_file(tmp_path / "odd.safetensors", "odd", base="flux-base")
    state = load_file(str(files["no-t5"]))
    state["model.diffusion_model.img_in.scale_weight"] = torch.ones(1)  # ComfyUI's scaled fp8
    save_file(state, str(tmp_path / "scaled.safetensors"))
    with pytest.raises(ValueError, match="scaled.safetensors is in ComfyUI's scaled-fp8 format"):
        checkpoints.import_checkpoint_file(tmp_path / "scaled.safetensors", "scaled", base="flux-base")
    assert sorted(m.name for m in model_store.list_models()) == ["chroma", "flux-base"]


def _sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> Path:
    """A safetensors file of these shapes whose data is a hole: its size is right, nothing is
    written (a 24 GB file takes no disk), so only a header-only check can finish quickly."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as stream:
        stream.write(len(raw).to_bytes(8, "little") + raw)
        stream.truncate(8 + len(raw) + offset)
    return path


def test_a_real_sized_transformer_file_is_checked_from_its_header(tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    shipped = CONFIGS / "flux1-schnell"  # FLUX.1 schnell's real architecture: 12B parameters
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(str(shipped / "transformer")))
    shapes = {k: tuple(v.shape) for k, v in flux_to_bfl(model.state_dict()).items()}
    file = _sparse_safetensors(tmp_path / "flux1-schnell.safetensors", shapes)
    assert file.stat().st_size > 23e9
    started = time.monotonic()
    check_transformer_file(file, shipped)  # diffusers' converter at FLUX.1's width, on meta tensors
    assert time.monotonic() - started < 20  # loading it would read 24 GB

    shapes["single_blocks.3.linear2.weight"] = (3072, 3072)  # one tensor of another shape
    odd = _sparse_safetensors(tmp_path / "odd.safetensors", shapes)
    with pytest.raises(FolderDoesNotLoad, match=r"single_transformer_blocks.3.proj_out.weight: \[3072, 3072\], "
                                                r"expected \[3072, 15360\]"):
        check_transformer_file(odd, shipped)
    with open(file, "r+b") as stream:  # a download cut short by one byte
        stream.truncate(file.stat().st_size - 1)
    with pytest.raises(FolderDoesNotLoad, match="flux1-schnell.safetensors is truncated"):
        check_transformer_file(file, shipped)
