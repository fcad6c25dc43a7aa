"""The protocol package: clients' settings in, one spec out, one result model back; no diffusers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from alice.engine.spec import GenerationSpec, batch_key, drawing_settings, setting
from alice.protocol.a1111 import parse_a1111_parameters, settings_from_a1111
from alice.engine.families import FAMILIES
from alice.protocol.generation import GenerationSettings, InvalidRequest, setting_limits
from alice.protocol.openai import ChatCompletionRequest, ImagesRequest, chat_settings, images_settings
from alice.protocol.results import GenerationParameters, GenerationResult, job_parameters
from harness.environment import ROOT

LIMITS = {"max_pixels": 1024 * 1024, "max_images": 4}


def test_importing_the_protocol_imports_neither_diffusers_nor_torch():
    """Clients' settings are checked without the engine's libraries (scheduler names are data)."""
    code = (
        "import importlib, pkgutil, sys, json; import alice.protocol as p\n"
        "for m in pkgutil.iter_modules(p.__path__): importlib.import_module('alice.protocol.' + m.name)\n"
        "print(json.dumps(sorted(n for n in ('torch', 'diffusers', 'transformers') if n in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_every_client_shape_gives_the_same_spec():
    """Native, chat metadata (camelCase, aliases) and the Images API meet in one conversion."""
    native = GenerationSettings(prompt="a fox", width=64, height=64, steps=3, guidance_scale=5, seed=9,
                                scheduler="DDIM", num_images=2)
    chat = GenerationSettings.model_validate(chat_settings(ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": "a fox"}],
        "metadata": {"size": "64x64", "numInferenceSteps": 3, "cfgScale": 5, "seed": 9, "sampler": "ddim", "n": 2},
    })))
    images = GenerationSettings.model_validate(images_settings(ImagesRequest(
        prompt="a fox", size="64x64", n=2, steps=3, guidance_scale=5, seed=9, scheduler="Ddim")))
    specs = [settings.to_spec(native_size=512, **LIMITS) for settings in (native, chat, images)]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0] == GenerationSpec(prompt="a fox", seed=9, width=64, height=64, steps=3, guidance_scale=5,
                                      scheduler="ddim", num_images=2)


def test_the_spec_gets_the_native_size_a_seed_and_every_lora():
    spec = GenerationSettings(prompt="a boat <lora:ink:0.5>", loras=[{"name": "sea"}]).to_spec(
        native_size=768, **LIMITS)
    assert (spec.width, spec.height) == (768, 768)
    assert 0 <= spec.seed <= 2**32 - 1 - 16  # room for seed + i of num_images
    assert spec.loras == (("ink", 0.5), ("sea", 1.0))
    assert spec.prompt == "a boat <lora:ink:0.5>"  # as written; the engine keeps tags from the text encoder


def test_the_spec_holds_the_servers_limits():
    with pytest.raises(InvalidRequest) as error:
        GenerationSettings(prompt="x", num_images=5).to_spec(native_size=64, **LIMITS)
    assert error.value.param == "num_images"
    with pytest.raises(InvalidRequest) as error:
        GenerationSettings(prompt="x").to_spec(native_size=2048, **LIMITS)  # the native size counts too
    assert error.value.param == "width"


class FinishedJob:
    id = "job-1"
    model = "alice-demo"
    created, started, finished = 100.0, 101.5, 104.0
    spec = GenerationSpec(prompt="a kite <lora:ink:0.5>", negative_prompt="rain", seed=7, width=64, height=96,
                          steps=4, guidance_scale=6, scheduler="euler_a", num_images=2, init_image="in.png",
                          strength=0.6, loras=(("ink", 0.5),))


def test_one_result_serves_every_answer():
    result = GenerationResult.from_job(FinishedJob())
    metadata = result.model_dump(mode="json")
    assert metadata["job_id"] == "job-1" and metadata["model"] == "alice-demo"
    assert metadata["seeds"] == [7, 8] and metadata["img2img"] is True and metadata["strength"] == 0.6
    assert metadata["timings"] == {"queued_s": 1.5, "generation_s": 2.5, "total_s": 4.0}
    assert "init_image" not in metadata  # the stored input's name is the server's business
    assert "mask_image" not in metadata and metadata["inpaint"] is False
    # Every setting of the spec shows, under its own name.
    hidden = {"init_image", "mask_image"}
    for field in dataclasses.fields(GenerationSpec):
        if field.name not in hidden:
            assert field.name in metadata, field.name
    # The job list shows the spec's settings, which read back into the same spec.
    parameters = job_parameters(FinishedJob.spec)
    assert GenerationParameters.model_validate(parameters).model_dump() == dataclasses.asdict(FinishedJob.spec)


def test_the_a1111_text_reads_back_into_the_same_settings():
    text = GenerationParameters.of(FinishedJob.spec).a1111_text("alice-demo", 1)
    assert text.splitlines()[-1].startswith(
        "Steps: 4, Sampler: Euler a, CFG scale: 6.0, Seed: 8, Size: 64x96, Model: alice-demo, Denoising strength: 0.6")
    again = settings_from_a1111(parse_a1111_parameters(text))
    assert again == {"prompt": "a kite <lora:ink:0.5>", "negative_prompt": "rain", "steps": 4, "guidance_scale": 6.0,
                     "seed": 8, "strength": 0.6, "width": 64, "height": 96, "scheduler": "euler_a",
                     "model": "alice-demo"}  # the tag's LoRA is not asked for twice
    GenerationSettings.model_validate(again)


def test_a_batch_shares_every_setting_but_the_per_image_ones():
    base = GenerationSpec(prompt="a", seed=1, width=64, height=64)
    assert batch_key(base) == batch_key(dataclasses.replace(base, prompt="b", seed=2, negative_prompt="c",
                                                            num_images=3))
    assert batch_key(base) == batch_key(dataclasses.replace(base, strength=0.3))  # text-to-image ignores it
    img2img = dataclasses.replace(base, init_image="x.png")
    assert batch_key(img2img) == batch_key(dataclasses.replace(img2img, init_image="y.png"))
    assert batch_key(img2img) != batch_key(dataclasses.replace(img2img, strength=0.3))
    assert batch_key(base) != batch_key(img2img)


def test_clip_skip_reaches_every_answer_and_reads_back():
    """A setting of the schema and the spec shows in the result, the A1111 text and the batch key."""
    spec = GenerationSettings(prompt="a fox", clip_skip=2, seed=3).to_spec(native_size=64, **LIMITS)
    assert spec.clip_skip == 2
    assert GenerationParameters.of(spec).model_dump()["clip_skip"] == 2
    text = GenerationParameters.of(spec).a1111_text("alice-demo", 0)
    assert text.endswith(", Clip skip: 2")
    assert settings_from_a1111(parse_a1111_parameters(text))["clip_skip"] == 2
    assert batch_key(spec) != batch_key(dataclasses.replace(spec, clip_skip=None))
    assert "Clip skip" not in GenerationParameters.of(dataclasses.replace(spec, clip_skip=None)).a1111_text("m", 0)
    for bad in (0, 13):
        with pytest.raises(ValueError, match="clip_skip"):
            GenerationSettings(prompt="a fox", clip_skip=bad)


def test_every_drawing_setting_is_the_specs_declaration():
    """The schema takes each drawing setting's type, default, limits and description from the
    spec (alice/engine/spec.py): declared once, so a new one needs no line in the protocol. A
    request may leave the size and seed to the server, and steps, guidance and scheduler to the
    model's family (None); their limits stay the spec's."""
    declared = drawing_settings()
    assert {"steps", "guidance_scale", "clip_skip", "scheduler", "strength", "num_images"} <= declared.keys()
    assert not {"init_image", "loras"} & declared.keys()  # the request has its own shape for these
    for name in declared:
        spec_field, request_field = setting(name), GenerationSettings.model_fields[name]
        assert request_field.metadata == spec_field.metadata, name
        assert request_field.json_schema_extra == spec_field.json_schema_extra, name
        if name in {"width", "height", "seed", "steps", "guidance_scale", "scheduler"}:
            assert request_field.default is None
            assert request_field.description.startswith(spec_field.description.rstrip("."))
        else:
            assert request_field.default == spec_field.default, name
            assert request_field.description == spec_field.description, name
    steps = GenerationSettings.model_json_schema()["properties"]["steps"]
    [number] = [part for part in steps["anyOf"] if part.get("type") == "integer"]
    assert (number["minimum"], number["maximum"], steps["default"]) == (1, 150, None)
    assert setting_limits()["steps"] == {"minimum": 1, "maximum": 150}


def test_settings_left_out_are_the_model_familys_and_what_it_does_not_take_is_refused():
    schnell, demo = FAMILIES["flux1-schnell"], FAMILIES["sd15"]
    spec = GenerationSettings(prompt="a fox", seed=1).to_spec(native_size=64, family=schnell, **LIMITS)
    assert (spec.steps, spec.guidance_scale, spec.scheduler) == (4, 0.0, "flow-euler")
    asked = GenerationSettings(prompt="a fox", steps=6, scheduler="FLOW-UNIPC").to_spec(
        native_size=64, family=schnell, **LIMITS)
    assert (asked.steps, asked.guidance_scale, asked.scheduler) == (6, 0.0, "flow-unipc")
    # An SD sampler's name on a flow model is the same solver on its flow (SAM always sends ddim).
    for sd_name, flow_name in {"ddim": "flow-euler", "Euler": "flow-euler", "unipc": "flow-unipc"}.items():
        assert GenerationSettings(prompt="a fox", scheduler=sd_name).to_spec(
            native_size=64, family=schnell, **LIMITS).scheduler == flow_name
    sd = GenerationSettings(prompt="a fox").to_spec(native_size=64, family=demo, **LIMITS)
    assert (sd.steps, sd.guidance_scale, sd.scheduler) == (25, 7.5, "dpm++_2m_karras")
    assert GenerationSettings(prompt="a fox").to_spec(native_size=64, **LIMITS).steps == 25  # no family: the spec's
    refusals = [
        ({"scheduler": "dpm++_2m_karras"}, "scheduler", "use one of: flow-euler, flow-unipc"),
        ({"scheduler": "dpm++_2m"}, "scheduler", "use one of: flow-euler, flow-unipc"),  # no flow DPM++ for schnell
        ({"scheduler": "flow-dpmpp-2m"}, "scheduler", "does not apply to flux1-schnell"),
        ({"negative_prompt": "blur"}, "negative_prompt", "flux1-schnell models take no negative prompt"),
        ({"clip_skip": 2}, "clip_skip", "not to flux1-schnell models"),
        ({"width": 72, "height": 64}, "width", "multiples of 16"),
    ]
    for values, param, words in refusals:
        with pytest.raises(InvalidRequest, match=words) as error:
            GenerationSettings(prompt="a fox", **values).to_spec(native_size=64, family=schnell, **LIMITS)
        assert error.value.param == param
    GenerationSettings(prompt="a fox", negative_prompt="  ").to_spec(native_size=64, family=schnell, **LIMITS)
    with pytest.raises(InvalidRequest, match="flux2-klein models have no image-to-image pipeline"):
        GenerationSettings(prompt="a fox", input_image="aGk=").to_spec(
            native_size=64, family=FAMILIES["flux2-klein"], **LIMITS)
    with pytest.raises(InvalidRequest, match="does not apply to sd15 models"):
        GenerationSettings(prompt="a fox", scheduler="flow-euler").to_spec(native_size=64, family=demo, **LIMITS)


def test_loras_on_a_family_diffusers_has_no_loader_for_are_a_400_saying_so():
    """Every family of diffusers 0.42.1 has a LoRA loader; one without (`loras=False` in its entry)
    refuses a request's LoRAs, in `loras` or the prompt's tags, before the queue."""
    import dataclasses

    sd3 = FAMILIES["sd3"]
    GenerationSettings(prompt="a fox <lora:inky:0.5>").to_spec(native_size=64, family=sd3, **LIMITS)  # it takes them
    without = dataclasses.replace(sd3, loras=False)
    for settings in ({"prompt": "a fox <lora:inky:0.5>"}, {"prompt": "a fox", "loras": [{"name": "inky"}]}):
        with pytest.raises(InvalidRequest, match="diffusers has no LoRA loader for sd3 models") as error:
            GenerationSettings(**settings).to_spec(native_size=64, family=without, **LIMITS)
        assert error.value.param == "loras"
