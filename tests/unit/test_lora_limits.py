"""LoRAs asked for by `<lora:name:scale>` tags obey the limits of the `loras` field, and a run
cancelled while its LoRAs load stops loading them."""

from __future__ import annotations

import pytest

from alice.engine.generate import GenerationStopped
from alice.engine.loras import loras_applied
from alice.protocol.generation import MAX_LORAS, GenerationSettings, InvalidRequest
from harness.lora import write_demo_lora


def settings(prompt: str, loras: list[dict] | None = None) -> GenerationSettings:
    return GenerationSettings(prompt=prompt, loras=loras or [])


def refusal(prompt: str, loras: list[dict] | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        settings(prompt, loras).requested_loras()
    return refused.value


def test_tags_then_the_field_within_the_limits():
    chosen = settings("a boat <lora:ink:0.5>, <lora:sea>", [{"name": "sky", "scale": -1}]).requested_loras()
    assert [(c.name, c.scale) for c in chosen] == [("ink", 0.5), ("sea", 1.0), ("sky", -1.0)]
    tags = "".join(f"<lora:l{i}:1>" for i in range(MAX_LORAS))
    assert len(settings("x " + tags).requested_loras()) == MAX_LORAS


def test_more_tags_than_the_field_allows():
    error = refusal("x " + "".join(f"<lora:l{i}:1>" for i in range(60)))
    assert error.param == "prompt" and f"at most {MAX_LORAS}" in str(error) and "60" in str(error)


def test_tags_and_field_count_together():
    tags = "".join(f"<lora:t{i}>" for i in range(MAX_LORAS - 2))
    error = refusal("x " + tags, [{"name": "f1"}, {"name": "f2"}, {"name": "f3"}])
    assert error.param == "prompt" and f"at most {MAX_LORAS}" in str(error)


def test_a_tag_scale_beyond_the_field_range():
    for scale in ("100000000000000000000", "-6", "9" * 400):  # 1e20, below the range, inf
        error = refusal(f"x <lora:ink:{scale}>")
        assert error.param == "prompt" and "scale" in str(error), (scale, str(error))
    assert "less than or equal to 5" in str(refusal("x <lora:ink:100000000000000000000>"))
    assert settings("x <lora:ink:5> <lora:sea:-5>").requested_loras()[1].scale == -5


def test_a_tag_name_longer_than_the_field_allows():
    error = refusal(f"x <lora:{'n' * 500}:1>")
    assert error.param == "prompt" and "name" in str(error) and "63" in str(error)


def test_the_same_lora_twice():
    error = refusal("x <lora:ink:0.5> <lora:ink:0.5>")
    assert error.param == "prompt" and "'ink'" in str(error) and "twice" in str(error)
    assert "twice" in str(refusal("x <lora:ink:0.5>", [{"name": "ink"}]))
    assert refusal("x", [{"name": "ink"}, {"name": "ink", "scale": 2}]).param == "loras"


def test_cancelled_while_loras_load_stops_before_the_next_one(demo_pipeline, tmp_path):
    pipe, _ = demo_pipeline
    path = write_demo_lora(tmp_path / "lora")
    asked = []

    def cancelled_after_the_first() -> str | None:
        asked.append(len(pipe.get_list_adapters().get("unet", [])))
        return "cancelled" if len(asked) > 1 else None

    with pytest.raises(GenerationStopped) as stopped:
        with loras_applied(pipe, [("a", path, 1.0), ("b", path, 1.0), ("c", path, 1.0)],
                           should_stop=cancelled_after_the_first):
            pytest.fail("the run must not start")
    assert stopped.value.reason == "cancelled"
    assert asked == [0, 1]  # asked before each load; the third never loaded
    assert pipe.get_list_adapters() == {}  # and the clean model is back
