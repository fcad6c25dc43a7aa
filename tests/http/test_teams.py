"""Teams on one server: with ALICE_ADMIN_KEYS, user keys see and cancel only their own jobs,
images and figures (another key's is a 404), only admins manage models (403 naming the role),
each key's queued jobs are bounded (429) and the keys take turns; without admin keys every key
does everything, as before; ALICE_RATE_LIMIT answers 429 with Retry-After, which the `openai`
SDK waits out by itself."""

from __future__ import annotations

import time

import openai
import pytest

from tests.http.conftest import start_fake_client
from tests.postgres_server import fresh_database, postgres_bin, postgres_server

pytestmark = pytest.mark.fake_engine

ANN, BOB, CY, ROOT = "ann=ann-key-0001", "bob=bob-key-0002", "cy=cy-key-00003", "root=root-key-0003"
SMALL = {"width": 64, "height": 64, "steps": 2}


def key(entry: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {entry.partition('=')[2]}"}


@pytest.fixture(scope="module")
def teams(tmp_path_factory):
    yield from start_fake_client(
        tmp_path_factory.mktemp("teams"), step_seconds=0.01, ALICE_API_KEYS=f"{ANN},{BOB},{CY}",
        ALICE_ADMIN_KEYS=ROOT, ALICE_MAX_QUEUED_PER_KEY="4", ALICE_QUEUE_SIZE="40",
    )


@pytest.fixture(scope="module")
def household(tmp_path_factory):
    yield from start_fake_client(
        tmp_path_factory.mktemp("household"), ALICE_API_KEYS=f"{ANN},{BOB}", ALICE_RATE_LIMIT="2/second",
        ALICE_ADMIN_KEYS="", ALICE_MAX_QUEUED_PER_KEY="0",  # not the other fixture's, whose environment is around
    )


@pytest.fixture(scope="module")
def shared_teams(tmp_path_factory):
    """Roles on a replica of the PostgreSQL-shared queue: the owner travels in the record."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is installed by `make test-tools`")
    with postgres_server() as server:
        yield from start_fake_client(
            tmp_path_factory.mktemp("shared-teams"), ALICE_DATABASE_URL=fresh_database(server),
            ALICE_API_KEYS=f"{ANN},{BOB}", ALICE_ADMIN_KEYS=ROOT, ALICE_MAX_QUEUED_PER_KEY="0", ALICE_RATE_LIMIT="",
        )


def finished_job(client, who: str, **body) -> dict:
    answer = client.post("/v1/jobs", json={"prompt": f"{who}'s", **SMALL, **body}, headers=key(who))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 30
    while (job := client.get(f"/v1/jobs/{job_id}", headers=key(who)).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def ids(client, who: str) -> set[str]:
    return {job["id"] for job in client.get("/v1/jobs", headers=key(who)).json()["data"]}


def test_a_user_key_reads_lists_and_cancels_its_own_jobs_only_and_an_admin_all(teams):
    anns, bobs = finished_job(teams, ANN), finished_job(teams, BOB)
    for method in ("get", "delete"):
        refused = getattr(teams, method)(f"/v1/jobs/{anns['id']}", headers=key(BOB))
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "job_not_found"  # as if none
    assert anns["id"] in ids(teams, ANN) and anns["id"] not in ids(teams, BOB) and bobs["id"] not in ids(teams, ANN)
    assert {anns["id"], bobs["id"]} <= ids(teams, ROOT)
    assert teams.get(f"/v1/jobs/{bobs['id']}", headers=key(ROOT)).status_code == 200
    # The admin tells whose each job is; a user key's own view names itself.
    owners = {job["id"]: job["owner"] for job in teams.get("/v1/jobs", headers=key(ROOT)).json()["data"]}
    assert owners[anns["id"]] == "ann" and owners[bobs["id"]] == "bob"
    assert teams.get(f"/v1/jobs/{bobs['id']}", headers=key(ROOT)).json()["owner"] == "bob"
    assert anns["owner"] == "ann" and {job["owner"] for job in teams.get("/v1/jobs", headers=key(ANN)).json()["data"]} == {"ann"}
    assert teams.get(f"/v1/jobs/{anns['id']}", headers=key(ANN)).json()["state"] == "succeeded"


def test_every_generation_route_files_its_job_under_the_key_that_asked(teams):
    before = ids(teams, ANN)
    assert teams.post("/generate", json={"prompt": "x", **SMALL}, headers=key(ANN)).status_code == 200
    assert teams.post("/v1/chat/completions", headers=key(ANN), json={
        "model": "sd/alice-demo", "messages": [{"role": "user", "content": "x"}],
        "metadata": {"width": 64, "height": 64, "steps": 2}}).status_code == 200
    assert teams.post("/v1/images/generations", headers=key(ANN), json={
        "model": "sd/alice-demo", "prompt": "x", "size": "64x64"}).status_code == 200
    new = ids(teams, ANN) - before
    sources = {teams.get(f"/v1/jobs/{job_id}", headers=key(ANN)).json()["source"] for job_id in new}
    assert sources == {"generate", "chat", "images"} and not new & ids(teams, BOB)


def test_a_user_keys_gallery_holds_its_own_images_and_image_urls_stay_open(teams):
    [anns] = finished_job(teams, ANN)["image_urls"]
    name = anns.rsplit("/", 1)[1]
    gallery = {who: {item["name"] for item in teams.get("/v1/gallery?limit=200", headers=key(who)).json()["data"]}
               for who in (ANN, BOB, ROOT)}
    assert name in gallery[ANN] and name in gallery[ROOT] and name not in gallery[BOB]
    assert teams.get("/v1/gallery", headers=key(BOB)).json()["total"] == len(gallery[BOB])
    refused = teams.delete(f"/v1/gallery/{name}", headers=key(BOB))
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "image_not_found"
    assert teams.get(f"/images/{name}").status_code == 200  # a capability URL, no key needed
    assert teams.delete(f"/v1/gallery/{name}", headers=key(ANN)).status_code == 200


def test_a_user_keys_metrics_count_its_own_jobs(teams):
    assert teams.get("/v1/metrics", headers=key(CY)).json()["jobs"] == {}
    finished_job(teams, CY)
    mine = teams.get("/v1/metrics", headers=key(CY)).json()
    assert mine["jobs"] == {"succeeded": 1} and mine["images_total"] == 1
    assert teams.get("/v1/metrics", headers=key(ROOT)).json()["jobs"]["succeeded"] > 1


def test_only_an_admin_key_manages_models_and_reads_the_configuration(teams):
    for method, path in (("post", "/v1/models/alice-demo/load"), ("post", "/v1/models/alice-demo/unload"),
                         ("delete", "/v1/models/alice-demo"), ("post", "/v1/models/download/url"),
                         ("get", "/v1/models/download/status"), ("post", "/v1/models/search/huggingface")):
        refused = getattr(teams, method)(path, headers=key(BOB))
        assert refused.status_code == 403, (path, refused.text)
        error = refused.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "admin_only"
        assert "admin key" in error["message"] and "'user'" in error["message"] and "bob" in error["message"]
    assert teams.get("/v1/models", headers=key(BOB)).status_code == 200
    assert teams.get("/v1/store/models", headers=key(BOB)).status_code == 200
    assert teams.post("/v1/models/alice-demo/load", headers=key(ROOT)).status_code == 200
    users, admins = (teams.get("/v1/settings", headers=key(who)).json() for who in (BOB, ROOT))
    assert users["caller"] == {"name": "bob", "role": "user", "roles": True} and users["settings"] is None
    assert users["limits"]["max_pixels"] > 0  # the form's limits are every key's
    assert admins["caller"]["role"] == "admin" and admins["settings"]["max_queued_per_key"] == 4
    assert admins["settings"]["admin_keys"] == ["****"]


def test_a_keys_waiting_jobs_are_bounded_and_the_keys_take_turns(teams):
    """Ann fills her share (one running, four waiting); Bob's single job, queued after all of
    hers, runs next: it waits for the batch running when it came, not for Ann's queue."""
    slow = {"prompt": "ann's", "width": 64, "height": 64, "steps": 100}
    answers = [teams.post("/v1/jobs", json=slow, headers=key(ANN)) for _ in range(6)]
    accepted = [answer.json()["id"] for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code != 202]
    assert len(accepted) == 5 and refused, [answer.text for answer in answers]
    assert refused[0].status_code == 429 and int(refused[0].headers["Retry-After"]) >= 1
    assert refused[0].json()["error"]["code"] == "too_many_queued_jobs"
    bob = teams.post("/v1/jobs", json={"prompt": "bob's", **SMALL}, headers=key(BOB))
    assert bob.status_code == 202  # Ann's share is full, not the queue
    jobs = {job_id: teams.get(f"/v1/jobs/{job_id}", headers=key(ROOT)).json() for job_id in accepted}
    deadline = time.monotonic() + 30
    while teams.get(f"/v1/jobs/{bob.json()['id']}", headers=key(BOB)).json()["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    bobs = teams.get(f"/v1/jobs/{bob.json()['id']}", headers=key(BOB)).json()
    waited = [teams.get(f"/v1/jobs/{job_id}", headers=key(ANN)).json() for job_id in accepted[1:]]
    assert all(job["started"] is None or job["started"] > bobs["started"] for job in waited), (bobs, waited, jobs)
    for job_id in accepted:
        teams.delete(f"/v1/jobs/{job_id}", headers=key(ANN))


def test_without_admin_keys_every_key_sees_and_manages_everything(household):
    anns = finished_job(household, ANN)
    assert household.get(f"/v1/jobs/{anns['id']}", headers=key(BOB)).status_code == 200
    # No roles, no owner in the view: the answers SAM and every client read stay as they were.
    assert "owner" not in anns and all("owner" not in job for job in household.get("/v1/jobs", headers=key(BOB)).json()["data"])
    assert anns["id"] in ids(household, BOB)
    assert household.post("/v1/models/alice-demo/load", headers=key(BOB)).status_code == 200
    assert household.get("/v1/settings", headers=key(BOB)).json()["caller"] == {
        "name": "bob", "role": "admin", "roles": False}


def test_the_rate_limit_answers_429_with_retry_after_which_the_openai_sdk_waits_out(household):
    time.sleep(1.0)  # a full budget
    for _ in range(30):  # reads are not counted: a page that polls spends nothing
        assert household.get("/v1/models", headers=key(ANN)).status_code == 200
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=ANN.partition("=")[2], http_client=household,
                        max_retries=0)
    draw = {"model": "sd/alice-demo", "prompt": "x", "size": "64x64", "response_format": "url"}
    sdk.images.generate(**draw)
    sdk.images.generate(**draw)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.images.generate(**draw)
    assert limited.value.response.headers["Retry-After"] == "1"
    assert limited.value.body["code"] == "rate_limit_exceeded" and "ann" in limited.value.body["message"]
    other = household.post("/v1/jobs", json={"prompt": "b", **SMALL}, headers=key(BOB))
    assert other.status_code == 202  # Bob's budget is his own
    started = time.monotonic()
    assert sdk.with_options(max_retries=2).images.generate(**draw).data[0].url  # retried after Retry-After
    assert time.monotonic() - started >= 0.4


def test_on_the_shared_queue_a_user_key_sees_its_own_jobs_and_images_only(shared_teams):
    anns, bobs = finished_job(shared_teams, ANN), finished_job(shared_teams, BOB)
    assert anns["replica"] and shared_teams.get(f"/v1/jobs/{anns['id']}", headers=key(BOB)).status_code == 404
    assert shared_teams.delete(f"/v1/jobs/{anns['id']}", headers=key(BOB)).status_code == 404
    assert ids(shared_teams, ANN) == {anns["id"]} and ids(shared_teams, BOB) == {bobs["id"]}
    assert ids(shared_teams, ROOT) == {anns["id"], bobs["id"]}
    [image] = [item["name"] for item in shared_teams.get("/v1/gallery", headers=key(BOB)).json()["data"]]
    assert bobs["image_urls"][0].endswith(image)



def test_the_document_declares_the_roles_and_the_shares_answers(monkeypatch):
    """With roles on, the model manager's operations declare 403; with a per-key share, every
    request that changes something declares 429 with Retry-After; the document stays valid.
    (Built for these settings directly: the in-process servers of this module share one app.)"""
    from openapi_spec_validator import validate

    import service
    from alice.config import Settings
    from alice.http.openapi import build_document

    # The environment wins over arguments in ALICE's settings: the other fixtures' is around.
    monkeypatch.setenv("ALICE_MAX_QUEUED_PER_KEY", "4")
    monkeypatch.setenv("ALICE_RATE_LIMIT", "")
    teams = Settings(api_keys=[ANN, BOB], admin_keys=[ROOT])
    document = build_document(service.http_app, teams)
    validate(document)
    paths = document["paths"]
    download = paths["/v1/models/download/huggingface"]["post"]["responses"]
    assert download["403"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    assert "403" not in paths["/v1/jobs"]["post"]["responses"]  # every key submits jobs
    for path, method in (("/v1/jobs", "post"), ("/v1/images/generations", "post"), ("/v1/jobs/{job_id}", "delete")):
        assert "Retry-After" in paths[path][method]["responses"]["429"]["headers"], (path, method)
    assert "429" not in paths["/v1/jobs"]["get"]["responses"]  # reading is not counted
    monkeypatch.setenv("ALICE_MAX_QUEUED_PER_KEY", "0")
    monkeypatch.setenv("ALICE_ADMIN_KEYS", "")
    household = build_document(service.http_app, Settings(api_keys=[ANN, BOB], admin_keys=[]))
    assert not {"403", "429"} & household["paths"]["/v1/models/download/huggingface"]["post"]["responses"].keys()
