"""Where SAM and OpenAI clients put generation settings, and how they merge."""

from __future__ import annotations

import logging

import pytest

from alice.protocol.generation import GenerationSettings, InvalidRequest
from alice.protocol.openai import ChatCompletionRequest, chat_settings, images_settings, ImagesRequest


def chat(**body):
    return chat_settings(ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "a cat"}], **body}))


def test_precedence_top_level_then_metadata_then_samConfig_then_sam_config():
    merged = chat(steps=1, seed=0, guidance_scale=1, width=64,
                  metadata={"steps": 2, "seed": 1, "guidance_scale": 2},
                  samConfig={"steps": 3, "seed": 2},
                  sam_config={"steps": 4})
    assert (merged["steps"], merged["seed"], merged["guidance_scale"], merged["width"]) == (4, 2, 2, 64)


def test_aliases_camel_case_and_size():
    merged = chat(metadata={"cfgScale": 3, "numInferenceSteps": 9, "sampler": "euler", "size": "640x384", "n": 2})
    assert merged == {"guidance_scale": 3, "steps": 9, "scheduler": "euler", "width": 640, "height": 384,
                      "num_images": 2, "prompt": "a cat"}


def test_unknown_settings_are_dropped():
    assert chat(metadata={"flux_capacitor": 1, "temperature": 2}) == {"prompt": "a cat"}


def test_model_prefix_and_case_insensitive_scheduler():
    settings = GenerationSettings.model_validate({**chat(model="sd/dreamy", metadata={"scheduler": "Euler_Ancestral"})})
    assert settings.model == "dreamy" and settings.scheduler == "euler_a"


def test_bad_size_names_the_field():
    with pytest.raises(InvalidRequest) as error:
        chat(metadata={"size": "huge"})
    assert error.value.param == "size"
    with pytest.raises(InvalidRequest):
        images_settings(ImagesRequest(prompt="x", size="12"))


def test_no_user_message():
    with pytest.raises(InvalidRequest) as error:
        chat(messages=[{"role": "assistant", "content": "hi"}])
    assert error.value.param == "messages"


def test_limits_from_the_configuration():
    settings = GenerationSettings(prompt="x", width=1024, height=1024, num_images=3)
    settings.check_limits(max_pixels=1024 * 1024, max_images=3)
    with pytest.raises(InvalidRequest, match="ALICE_MAX_PIXELS"):
        settings.check_limits(max_pixels=1024 * 1023, max_images=3)
    with pytest.raises(InvalidRequest, match="ALICE_MAX_IMAGES_PER_REQUEST"):
        settings.check_limits(max_pixels=1024 * 1024, max_images=2)


@pytest.fixture
def ignored_log(caplog, monkeypatch):
    """A fresh memory of ignored names, and the `alice.protocol` INFO records."""
    from alice.protocol import openai

    monkeypatch.setattr(openai, "IGNORED", openai.IgnoredNames(limit=5))
    # configure_logging (run by any in-process server earlier in the session) stops propagation.
    monkeypatch.setattr(logging.getLogger("alice"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="alice.protocol"):
        yield caplog


def test_each_ignored_setting_is_logged_once_by_name_never_its_value(ignored_log):
    chat(stepz=9, metadata={"guidance": "SECRET-VALUE", "steps": 3}, samConfig={"guidance": 1},
         sam_config={"sampler_nmae": "euler"})
    images_settings(ImagesRequest(prompt="x", stepz=4, style="vivid"))
    names = [record.args[0] for record in ignored_log.records]
    assert names == ["stepz", "guidance", "sampler_nmae", "style"]
    assert all(record.levelno == logging.INFO for record in ignored_log.records)
    assert "in metadata" in ignored_log.records[1].getMessage()
    assert "SECRET-VALUE" not in ignored_log.text


def test_ignored_names_are_cut_short_made_safe_and_bounded(ignored_log):
    chat(metadata={"x" * 5000: 1, "evil\nFAKE LOG LINE": 1})
    chat(metadata={f"name{i}": 1 for i in range(1000)})
    lines = ignored_log.text.splitlines()
    assert all(len(line) < 300 for line in lines) and not any(line.startswith("FAKE") for line in lines)
    assert "'evil?FAKE?LOG?LINE'" in ignored_log.text
    assert len(ignored_log.records) == 6  # five names, then one "no longer logging"
    assert "no longer logging" in ignored_log.records[-1].getMessage()
    from alice.protocol import openai

    assert len(openai.IGNORED.seen) == 5 and max(map(len, openai.IGNORED.seen)) <= 43
