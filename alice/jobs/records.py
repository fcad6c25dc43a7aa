"""A job's stored record: its own versioned shape, apart from the engine's dataclasses.

Both stores (SQLite, PostgreSQL) keep this JSON. The job's fields are named here, so a
renamed `Job` attribute changes no stored record; the drawing settings are stored by name,
LoRAs as {name, scale}. A setting added to `GenerationSpec` (with its default) is stored
without a change here and older records read as that default; a reader skips names it does
not know (a record from a newer replica in the shared queue). A change of a field's meaning
or shape is a new `version`. Records written before the shape had a version (version 0) held
`dataclasses.asdict(GenerationSpec)` under `parameters`: they are still read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alice.engine.spec import GenerationSpec

VERSION = 1

# Every drawing setting but the LoRAs, whose stored shape is their own.
_SPEC_FIELDS = tuple(field.name for field in dataclasses.fields(GenerationSpec) if field.name not in ("loras", "prompt_notes"))


def spec_record(spec: GenerationSpec) -> dict[str, Any]:
    return {
        **{name: getattr(spec, name) for name in _SPEC_FIELDS},
        "loras": [{"name": name, "scale": scale} for name, scale in spec.loras],
        "prompt_notes": list(spec.prompt_notes),
    }


def spec_from_record(stored: dict[str, Any]) -> GenerationSpec:
    return GenerationSpec(
        **{name: stored[name] for name in _SPEC_FIELDS if name in stored},
        loras=tuple((lora["name"], float(lora["scale"])) for lora in stored.get("loras", ())),
        prompt_notes=tuple(stored.get("prompt_notes", ())),  # a JSON list when read back
    )


def job_record(job: Any) -> dict[str, Any]:
    """A `Job` as stored (version 1)."""
    return {
        "version": VERSION,
        "id": job.id,
        "state": job.state.value,
        "model": job.model,
        "source": job.source,
        "spec": spec_record(job.spec),
        "created": job.created,
        "deadline": job.deadline,
        "started": job.started,
        "generated": job.generated,
        "finished": job.finished,
        "step": job.step,
        "total_steps": job.total_steps,
        "error": job.error,
        "error_code": job.error_code,
        "images": list(job.images),
        "batch": job.batch,
        "replica": job.replica,
        "owner": job.owner,
    }


def job_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The `Job` constructor's arguments from a stored record of any version."""
    version = record.get("version", 0)
    if version == 0:  # before versions: the engine's dataclass, dumped as it was
        parameters = record["parameters"]
        spec = spec_from_record({**parameters, "loras": [
            {"name": name, "scale": scale} for name, scale in parameters.get("loras", ())
        ]})
    elif version == 1:
        spec = spec_from_record(record["spec"])
    else:
        raise ValueError(f"job record {record.get('id')} has version {version}; this ALICE reads up to {VERSION}")
    return {
        "id": record["id"],
        "state": record["state"],
        "model": record["model"],
        "source": record["source"],
        "spec": spec,
        "created": record["created"],
        "deadline": record["deadline"],
        "started": record.get("started"),
        "generated": record.get("generated"),
        "finished": record.get("finished"),
        "step": record.get("step", 0),
        "total_steps": record.get("total_steps", 0),
        "error": record.get("error"),
        "error_code": record.get("error_code"),
        "images": list(record.get("images", ())),
        "batch": record.get("batch", 0),
        "replica": record.get("replica"),
        "owner": record.get("owner"),  # none in records from before keys had names: an admin's to see
    }
