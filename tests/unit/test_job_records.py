"""The stored job record is ALICE's own versioned shape, and records from before it still load."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

from alice.engine.generate import GenerationSpec
from alice.jobs import records
from alice.jobs.sqlite import SqliteJobStore
from alice.jobs.queue import Job, JobState

SPEC = GenerationSpec(prompt="a cat", seed=7, width=64, height=64, steps=3, init_image="in.png", strength=0.5,
                      loras=(("ink", 0.8),))


def test_the_record_names_its_version_and_its_own_fields():
    job = Job(model="m", spec=SPEC, source="sam", deadline=123.0, images=["a.png"], replica="gpu0")
    record = job.record()
    assert record["version"] == records.VERSION == 1
    assert record["spec"] == {
        "prompt": "a cat", "negative_prompt": "", "seed": 7, "width": 64, "height": 64, "steps": 3,
        "guidance_scale": 7.5, "scheduler": SPEC.scheduler, "num_images": 1, "init_image": "in.png",
        "strength": 0.5, "clip_skip": None, "output_format": "png", "output_compression": 100,
        "loras": [{"name": "ink", "scale": 0.8}], "prompt_notes": [], "mask_image": None,
        "hires_scale": None, "hires_steps": None, "hires_strength": 0.7, "hires_upscaler": "latent",
        "hires_width": None, "hires_height": None,
    }
    assert "parameters" not in record  # not the engine's dataclass dumped as it is
    again = Job.from_record(json.loads(json.dumps(record)))
    assert again.spec == SPEC and again.replica == "gpu0" and again.images == ["a.png"] and again.deadline == 123.0


def test_a_sqlite_row_from_before_versions_still_loads(tmp_path):
    """What Job.record() wrote before the versioned shape: the public view with `parameters`."""
    old = {
        "id": "job-old", "object": "job", "state": "succeeded", "progress": 1.0, "step": 3, "total_steps": 3,
        "created": 1.0, "started": 2.0, "generated": 3.0, "finished": 4.0, "error": None, "error_code": None,
        "images": ["old.png"], "batch": 1, "model": "m", "source": "sam",
        "parameters": json.loads(json.dumps(dataclasses.asdict(SPEC))), "deadline": 99.0,
    }
    path = tmp_path / "jobs.sqlite3"
    SqliteJobStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO jobs (id, created, state, record) VALUES (?, ?, ?, ?)",
                   ("job-old", 1.0, "succeeded", json.dumps(old)))
    [record] = SqliteJobStore(path).load_all()
    job = Job.from_record(record)
    assert job.spec == SPEC and job.state is JobState.SUCCEEDED and job.images == ["old.png"]
    assert job.replica is None and job.record()["version"] == 1


def test_a_setting_added_to_the_spec_is_kept_and_older_or_newer_records_still_load():
    """A queued job keeps every setting across a restart (clip_skip came after version 1); a
    record without it reads as its default, and a name this ALICE does not know (a newer
    replica's record in the shared queue) is skipped."""
    job = Job(model="m", spec=dataclasses.replace(SPEC, clip_skip=2), source="sam", deadline=1.0)
    record = json.loads(json.dumps(job.record()))
    assert Job.from_record(record).spec.clip_skip == 2
    del record["spec"]["clip_skip"]
    record["spec"]["a_later_setting"] = 3
    assert Job.from_record(record).spec == SPEC
