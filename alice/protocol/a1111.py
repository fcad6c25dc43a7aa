"""AUTOMATIC1111's `parameters` text: how SD tools (and A1111's PNG Info tab) read an image's
settings back. Written into every PNG ALICE saves; read back for the gallery."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, TypedDict

from pydantic import TypeAdapter, ValidationError

from alice.engine.prompt_tags import extract_prompt_loras
from alice.engine.scheduler_names import scheduler_for_sampler
from alice.protocol.generation import GenerationSettings

# AUTOMATIC1111's own pattern for one `Key: value` of the settings line (modules/infotext_utils.py).
_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SETTING_KEY = re.compile(r"\w[\w \-/]+")
_NEGATIVE_PREFIX = "Negative prompt:"


class A1111Parameters(TypedDict):
    """What `parse_a1111_parameters` reads back."""

    prompt: str
    negative_prompt: str
    settings: dict[str, str]


def _quote(value: str) -> str:
    """Quote a setting like A1111 does, so commas, colons and newlines don't split the line."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded
    return value


def a1111_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    guidance_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    extra: dict[str, str] | None = None,
) -> str:
    """The `parameters` text AUTOMATIC1111 writes, which SD tools (and its PNG Info tab) read back."""
    settings = {
        "Steps": str(steps),
        "Sampler": sampler,
        # A1111 stores cfg_scale as a float and writes str(float): 7 -> "7.0", 7.5 -> "7.5".
        "CFG scale": str(float(guidance_scale)),
        "Seed": str(seed),
        "Size": f"{width}x{height}",
        "Model": model,
    }
    for key, value in (extra or {}).items():
        # A key A1111's parser can't match would silently corrupt the line; fail where it's written.
        if not _SETTING_KEY.fullmatch(key):
            raise ValueError(f"not an A1111 setting name: {key!r}")
        settings[key] = str(value)
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{_NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def parse_a1111_parameters(text: str) -> A1111Parameters:
    """Read A1111 `parameters` text back: prompt, negative prompt and the settings line as a dict.

    Follows A1111's reader: the last line is the settings line when it holds at least three
    `Key: value` pairs; every line from `Negative prompt:` on is the negative prompt.
    """
    *lines, last = text.rstrip("\n").split("\n")
    if len(_SETTING.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if not negative and line.startswith(_NEGATIVE_PREFIX):
            negative.append(line.removeprefix(_NEGATIVE_PREFIX).removeprefix(" "))
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    settings = {key.strip(): _unquote(value.strip()) for key, value in _SETTING.findall(last)}
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), "settings": settings}


def a1111_labels() -> dict[str, str]:
    """The settings A1111's text names beyond its fixed ones, each with its label there: the
    schema says it (`json_schema_extra={"a1111": "Clip skip"}`), so a new one needs no code here."""
    return {
        name: field.json_schema_extra["a1111"]
        for name, field in GenerationSettings.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and "a1111" in field.json_schema_extra
    }


def settings_from_a1111(parsed: A1111Parameters) -> dict[str, Any]:
    """What to send to `/generate` to draw an image again, as far as its text tells."""
    settings = parsed["settings"]
    out: dict[str, Any] = {"prompt": parsed["prompt"], "negative_prompt": parsed["negative_prompt"]}
    labels = {"steps": "Steps", "guidance_scale": "CFG scale", "seed": "Seed", "strength": "Denoising strength"}
    for name, label in {**labels, **a1111_labels()}.items():
        if label in settings:
            with contextlib.suppress(ValidationError):
                out[name] = TypeAdapter(GenerationSettings.model_fields[name].annotation).validate_python(
                    settings[label]
                )
    width, _, height = settings.get("Size", "").partition("x")
    if width.isdigit() and height.isdigit():
        out["width"], out["height"] = int(width), int(height)
    if scheduler := scheduler_for_sampler(settings.get("Sampler", "")):
        out["scheduler"] = scheduler
    if settings.get("Model"):
        out["model"] = settings["Model"]
    loras = []
    # The text lists the prompt's <lora:...> tags too; asked for again in `loras` they would be twice.
    _, tagged = extract_prompt_loras(out["prompt"])
    for part in settings.get("LoRAs", "").split():
        name, _, scale = part.rpartition(":")
        if name in {tag for tag, _ in tagged}:
            continue
        try:
            loras.append({"name": name, "scale": float(scale)})
        except ValueError:
            continue
    if loras:
        out["loras"] = loras
    return out
