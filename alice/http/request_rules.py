"""The request models' rules across fields, in JSON Schema 2020-12, for ALICE's served document.

The rules are declared in the protocol, where the checks that refuse a request read them
(generation.NEEDS_INPUT_IMAGE, NOT_WITH_INPUT_IMAGE; image_options.EDIT_OPTIONS;
models.WHOLE_REPO_OPTIONS); here they are only written out. They stay out of the models' own `model_json_schema()`: BentoML builds
its document (`bentoml build`'s apis/openapi.yaml) from GenerateRequest's too, and its Schema
class takes no `if`, `then` or `not`.
"""

from __future__ import annotations

from typing import Any

from alice.protocol.generation import NEEDS_INPUT_IMAGE, NOT_WITH_INPUT_IMAGE, sent
from alice.protocol.image_options import EDIT_OPTIONS
from alice.protocol.models import WHOLE_REPO_OPTIONS, HuggingFaceDownload
from alice.protocol.openai import ImagesRequest


def add_cross_field_rules(schemas: dict[str, dict[str, Any]]) -> None:
    """Each component schema (the document's own copies) with the rules across its fields in its `allOf`.

    `if`/`then` and `not` rather than `dependentRequired`: a setting sent as null is one left
    out, which `dependentRequired` (key present) cannot say."""
    for name, schema in schemas.items():
        rules = _rules(name, schema.get("properties", {}))
        if rules:
            schema.setdefault("allOf", []).extend(rules)


def _rules(name: str, properties: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    if "input_image" in properties:  # the drawing settings (GenerationSettings and the bodies made from it)
        rules += [{"if": sent(setting), "then": sent("input_image")}
                  for setting in NEEDS_INPUT_IMAGE if setting in properties]
        rules += [{"not": {"allOf": [sent(setting), sent("input_image")]}}
                  for setting in NOT_WITH_INPUT_IMAGE if setting in properties]
    if name == ImagesRequest.__name__:  # /v1/images/generations' JSON; the edits' form takes them
        rules += [{"not": sent(option)} for option in EDIT_OPTIONS]
    if name == HuggingFaceDownload.__name__:  # a whole repo's options (true) with one `filename`: refused
        rules += [{"not": {"required": [option, "filename"],
                           "properties": {option: {"const": True}, "filename": {"type": "string"}}}}
                  for option in WHOLE_REPO_OPTIONS]
    return rules
