"""The demo model's data, judge and trainer: the data set is what its captions say, the judge
reads pictures right, held-out combinations stay out of training, and training runs end to end."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alice.demo_training.judge import judge
from alice.demo_training.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    WORDS,
    Scene,
    colour_combinations,
    draw,
    evaluation_scenes,
    held_out_combinations,
    training_scenes,
)
from alice.demo_training.train import TrainingPlan, train_demo
from alice.engine.pipelines import choose_placement, load_pipeline


def test_captions_read_like_a_person_wrote_them() -> None:
    scene = Scene("red", "circle", "blue", "small", "top left")
    assert scene.caption() == "a small red circle on a blue background, top left"
    assert Scene("red", "circle", "blue").caption(1) == "red circle on blue"
    assert Scene("green", "square", "white", "large", "bottom right").caption(2) == (
        "a large green square in the bottom right corner on a white background"
    )
    assert Scene("orange", "circle", "blue").caption() == "an orange circle on a blue background"
    assert Scene("red", "square", "orange", "", "top right").caption(4) == (
        "a red square with an orange background, top right"
    )
    assert Scene("red", "square", "blue", "small", "top left").caption(5) == (
        "a small red square on a blue background in the top left corner"
    )
    assert Scene("red", "square", "blue").caption(6) == "red square in the middle with a blue background"


def test_every_phrasing_fits_the_demo_tokenizer_word_by_word() -> None:
    """Each caption, at its longest, is whole-word tokens within the 16 the model reads."""
    from alice.engine.demo import build_demo_architecture

    tokenizer = build_demo_architecture(whole_words=WORDS).tokenizer
    longest = Scene("purple", "triangle", "orange", "small", "bottom right")
    for template in range(len(TEMPLATES)):
        caption = longest.caption(template)
        tokens = tokenizer.tokenize(caption)
        assert len(tokens) == len(caption.replace(",", " ,").split()), caption
        assert len(tokens) + 2 <= tokenizer.model_max_length, caption


def test_held_out_combinations_are_balanced_and_never_trained_on() -> None:
    held_out = held_out_combinations()
    assert len(held_out) == len(set(held_out)) == 24
    for colour in COLOURS:
        assert sum(c == colour for c, _, _ in held_out) == 3
        assert sum(b == colour for _, _, b in held_out) == 3
    assert all(sum(s == shape for _, s, _ in held_out) == 8 for shape in SHAPES)
    scenes, captions, pixels = training_scenes(600, seed=0)
    assert pixels.shape == (600, 64, 64, 3) and pixels.dtype == np.uint8
    assert not {(s.colour, s.shape, s.background) for s in scenes} & set(held_out)
    assert all(s.colour in caption and s.shape in caption for s, caption in zip(scenes, captions))
    assert {(s.colour, s.shape, s.background) for s in evaluation_scenes()} == set(held_out)


def test_training_data_is_the_same_for_the_same_seed() -> None:
    first, again, other = training_scenes(50, seed=3), training_scenes(50, seed=3), training_scenes(50, seed=4)
    assert first[1] == again[1] and np.array_equal(first[2], again[2])
    assert first[1] != other[1]


def test_the_judge_reads_every_drawn_scene_right() -> None:
    rng = random.Random(0)
    for colour, shape, background in colour_combinations():
        scene = Scene(colour, shape, background, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)))
        verdict = judge(draw(scene, rng), scene)
        assert verdict.colours_right(scene) and verdict.shape == shape and verdict.place_right(scene), (scene, verdict)


def test_the_judge_is_not_fooled() -> None:
    asked = Scene("red", "circle", "blue", "", "top left")
    # the right colours in the wrong corner: colours found nowhere near, place wrong
    elsewhere = judge(draw(Scene("red", "circle", "blue", "", "bottom right")), asked)
    assert elsewhere.shape_colour is None and not elsewhere.place_right(asked)
    swapped = judge(draw(Scene("blue", "circle", "red", "", "top left")), asked)
    assert not swapped.colours_right(asked)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert not judge(noise, asked).colours_right(asked)
    flat = Image.new("RGB", (64, 64), COLOURS["blue"])
    assert judge(flat, asked).shape_colour is None
    # a larger picture is judged at 64 px
    big = draw(asked).resize((256, 256), Image.Resampling.NEAREST)
    assert judge(big, asked).colours_right(asked)


def test_training_runs_end_to_end_and_saves_a_loadable_pipeline(tmp_path: Path) -> None:
    """A few steps of the real recipe: what `alice models train-demo` runs, shortened."""
    report = train_demo(tmp_path / "out", TrainingPlan(images=32, vae_steps=2, unet_steps=2, vae_batch=8, unet_batch=8),
                        progress=False)
    assert json.loads((tmp_path / "out" / "training.json").read_text())["plan"]["unet_steps"] == 2
    assert report["autoencoder_psnr_db"] > 0 and report["denoiser_loss"] > 0
    pipe = load_pipeline(tmp_path / "out", choose_placement("cpu"))
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from its own latents
    image = pipe("a red circle on a blue background", num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_training_goes_on_from_an_earlier_model_and_saves_checkpoints(tmp_path: Path) -> None:
    """`--earlier`: the earlier weights are where training starts; its report travels along."""
    plan = TrainingPlan(images=32, vae_steps=2, unet_steps=4, vae_batch=8, unet_batch=8)
    train_demo(tmp_path / "first", plan, progress=False)
    report = train_demo(tmp_path / "second", plan, progress=False, checkpoint_every=2, earlier=tmp_path / "first")
    assert report["started_from"]["plan"] == json.loads((tmp_path / "first" / "training.json").read_text())["plan"]
    assert (tmp_path / "second" / "checkpoints" / "step-2" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "second" / "checkpoints" / "step-4").exists()  # the last step is the model itself


def test_the_guided_loss_trains_the_empty_caption_too(tmp_path: Path) -> None:
    """With `guided_loss_weight` the empty caption's prediction is in the loss of captioned
    pictures as well: the same seed and data train a different denoiser."""
    from safetensors.torch import load_file

    plan = TrainingPlan(images=32, vae_steps=1, unet_steps=3, vae_batch=8, unet_batch=8, empty_caption_share=0.0)
    for name, weight in (("plain", 0.0), ("guided", 1.0)):
        report = train_demo(tmp_path / name, replace(plan, guided_loss_weight=weight), progress=False)
        assert report["plan"]["guided_loss_weight"] == weight and report["denoiser_loss"] > 0
    plain, guided = (load_file(tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors") for name in ("plain", "guided"))
    assert any(not torch.equal(plain[key], guided[key]) for key in plain)


def test_a_stage_of_no_steps_keeps_the_earlier_models(tmp_path: Path) -> None:
    """The autoencoder and the denoiser can be trained by two commands: 0 steps keeps a stage."""
    from safetensors.torch import load_file

    def weights(folder: Path, part: str) -> dict:
        return load_file(next((folder / part).glob("*.safetensors")))

    plan = TrainingPlan(images=32, vae_steps=2, unet_steps=2, vae_batch=8, unet_batch=8)
    train_demo(tmp_path / "first", plan, progress=False)
    autoencoder_only = train_demo(tmp_path / "vae", replace(plan, unet_steps=0), progress=False, earlier=tmp_path / "first")
    denoiser_only = train_demo(tmp_path / "unet", replace(plan, vae_steps=0), progress=False, earlier=tmp_path / "vae")
    assert autoencoder_only["denoiser_loss"] is None and denoiser_only["denoiser_loss"] > 0
    for folder, kept, trained, earlier in ((tmp_path / "vae", "unet", "vae", tmp_path / "first"),
                                           (tmp_path / "unet", "vae", "unet", tmp_path / "vae")):
        before, after = weights(earlier, kept), weights(folder, kept)
        assert all(torch.equal(before[name], after[name]) for name in before), (folder, kept)
        before, after = weights(earlier, trained), weights(folder, trained)
        assert not all(torch.equal(before[name], after[name]) for name in before), (folder, trained)


def test_an_earlier_model_keeps_its_words_when_words_are_added(tmp_path: Path) -> None:
    """Starting from a model with a smaller vocabulary: the words it knew mean what they meant
    (same text states), though adding words moves their token ids."""
    from alice.demo_training.train import start_from
    from alice.engine.demo import build_demo_architecture

    fewer = tuple(word for word in WORDS if word not in ("an", "with"))
    build_demo_architecture(seed=1, whole_words=fewer).save_pretrained(str(tmp_path / "earlier"))
    earlier = load_pipeline(tmp_path / "earlier", choose_placement("cpu"))
    pipe = build_demo_architecture(seed=0, whole_words=WORDS)
    start_from(pipe, tmp_path / "earlier")
    caption = "a small red circle on a blue background, top left"
    ids = pipe.tokenizer(caption, return_tensors="pt").input_ids
    earlier_ids = earlier.tokenizer(caption, return_tensors="pt").input_ids
    assert not torch.equal(ids, earlier_ids)  # the ids moved
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids)[0], earlier.text_encoder(earlier_ids)[0].float(), atol=1e-5)
    assert torch.equal(pipe.unet.conv_in.weight, earlier.unet.conv_in.weight.float())


def test_the_autoencoder_weighs_pixels_near_an_edge() -> None:
    from alice.demo_training.train import _as_tensor, _near_an_edge

    scene = Scene("red", "square", "blue")
    edges = _near_an_edge(_as_tensor(np.array(draw(scene))[None]))[0, 0]
    assert edges[0, 0] == 0 and edges[32, 32] == 0  # flat background, flat inside
    left = round(scene.centre[0] - scene.half_width)
    assert edges[32, left] == 1 and edges[32, left - 3] == 0  # the square's left edge, and 3 px out


def test_the_evaluation_counts_each_check_over_all_pictures() -> None:
    from alice.demo_training.evaluate import Evaluation

    right = Scene("red", "circle", "blue")
    wrong_background = Scene("red", "circle", "green")
    picture = draw(right)
    evaluation = Evaluation([(right, right.caption(), judge(picture, right)),
                             (wrong_background, wrong_background.caption(), judge(picture, wrong_background))])
    shares = evaluation.shares()
    assert shares["shape colour"] == 1.0 and shares["background"] == 0.5 and shares["both colours"] == 0.5
    assert evaluation.summary().startswith("2 held-out prompts: shape colour 100.0%, background 50.0%")
    small = Scene("red", "triangle", "blue", "small")
    evaluation.results.append((small, small.caption(), judge(draw(small), small)))
    assert evaluation.shares(("small",))["shape"] == 1.0 and evaluation.count(("small",)) == 1
    assert evaluation.summary().endswith("shape by size: medium and large 100.0% of 2, small 100.0% of 1")


def test_the_shipped_autoencoder_gives_back_the_shapes_it_is_shown() -> None:
    """`alice models evaluate-demo --autoencoder`: the ceiling of what the model can draw."""
    from alice.demo_training.evaluate import autoencoder_round_trip
    from alice.engine.demo import DEMO_MODEL_DIR

    shares = autoencoder_round_trip(DEMO_MODEL_DIR, count=200)
    assert list(shares) == ["large", "medium", "small"]
    assert shares["large"] >= 0.95 and shares["medium"] >= 0.95, shares  # both 100% measured
