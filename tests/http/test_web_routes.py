"""The web page's files under /web/ and the admin JSON it reads: gallery, settings, the store."""

from __future__ import annotations

import re

import pytest

from alice.http.web_routes import WEB_DIR, static_file
from tests.http.conftest import API_KEY, OTHER_KEY

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize(("path", "content_type"), [
    ("/web/", "text/html; charset=utf-8"),
    ("/web/index.html", "text/html; charset=utf-8"),
    ("/web/app.js", "text/javascript; charset=utf-8"),
    ("/web/style.css", "text/css; charset=utf-8"),
])
def test_the_page_loads_without_a_key_with_a_strict_policy(keyed_client, path, content_type):
    response = keyed_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy


def test_bare_web_redirects_to_the_page(keyed_client):
    response = keyed_client.get("/web", follow_redirects=False)
    assert response.status_code == 308 and response.headers["location"] == "web/"


def test_the_page_uses_nothing_from_elsewhere_and_writes_no_html():
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB_DIR / name).read_text()
        assert re.findall(r"https?://[\w-]+\.[\w.-]+|(?:src|href)=[\"']//|url\(\s*[\"']?(?:https?:)?//", text) == [], name
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (name, sink)


@pytest.mark.parametrize("path", [
    "../http/app.py", "../../service.py", ".hidden.js", "nope.js", "app.js/", "a\\..\\app.js",
    "/etc/passwd", "", "index.html/..", "../web/app.js", "__init__.py", "x/../app.js",
])
def test_nothing_outside_the_folder_or_of_another_kind_is_found(path):
    assert static_file(path) is None


@pytest.mark.parametrize("path", ["%2e%2e/http/app.py", "..%2fhttp%2fapp.py", "%2e%2e%2f%2e%2e%2fservice.py",
                                  ".gitignore", "nope.js", "app.js%00.css"])
def test_nothing_outside_the_folder_is_served(keyed_client, path):
    response = keyed_client.get(f"/web/{path}")
    assert response.status_code == 404
    assert "import" not in response.text


def test_the_files_are_found():
    assert static_file("app.js") == WEB_DIR / "app.js"
    assert static_file("index.html") == WEB_DIR / "index.html"


def test_admin_json_needs_the_key(keyed_client):
    for method, path in [("GET", "/v1/gallery"), ("DELETE", f"/v1/gallery/{'0' * 32}.png"),
                         ("GET", "/v1/settings"), ("GET", "/v1/store/models")]:
        assert keyed_client.request(method, path).status_code == 401
        assert keyed_client.request(method, path, headers={"X-Api-Key": OTHER_KEY}).status_code != 401


def test_gallery_lists_newest_first_with_parameters_then_deletes(keyed_client):
    body = {"prompt": "a gallery, with: commas", "negative_prompt": "blur", "width": 64, "height": 72,
            "steps": 2, "seed": 77, "scheduler": "euler_a", "num_images": 2}
    made = keyed_client.post("/generate", json=body, headers=KEY).json()
    names = [image["name"] for image in made["images"]]
    page = keyed_client.get("/v1/gallery?limit=2", headers=KEY).json()
    assert page["object"] == "list" and page["total"] >= 2 and page["limit"] == 2
    assert {item["name"] for item in page["data"]} == set(names)
    item = next(i for i in page["data"] if i["name"] == names[1])
    assert item["url"] == f"/images/{names[1]}"
    assert item["parameters"]["prompt"] == "a gallery, with: commas"
    assert item["parameters"]["negative_prompt"] == "blur"
    assert item["parameters"]["settings"]["Seed"] == "78"
    assert item["generation"] == {
        "prompt": "a gallery, with: commas", "negative_prompt": "blur", "steps": 2, "guidance_scale": 7.5,
        "seed": 78, "width": 64, "height": 72, "scheduler": "euler_a", "model": "alice-demo",
    }
    assert keyed_client.get("/v1/gallery?offset=1&limit=1", headers=KEY).json()["data"][0]["name"] != page["data"][0]["name"]
    assert keyed_client.get("/v1/gallery?limit=0", headers=KEY).status_code == 400
    assert keyed_client.get("/v1/gallery?limit=1000", headers=KEY).status_code == 400

    assert keyed_client.delete(f"/v1/gallery/{names[0]}", headers=KEY).json()["deleted"] is True
    assert keyed_client.get(f"/images/{names[0]}").status_code == 404
    assert keyed_client.delete(f"/v1/gallery/{names[0]}", headers=KEY).status_code == 404
    assert keyed_client.delete("/v1/gallery/..%2fjobs.sqlite3", headers=KEY).status_code == 404
    assert keyed_client.get(f"/images/{names[1]}").status_code == 200


def test_settings_are_masked_and_describe_the_limits(keyed_client):
    response = keyed_client.get("/v1/settings", headers=KEY)
    assert API_KEY not in response.text and OTHER_KEY not in response.text
    info = response.json()
    assert info["settings"]["api_keys"] == ["****", "****"]
    assert info["descriptions"]["queue_size"]["env"] == "ALICE_QUEUE_SIZE"
    assert "euler_a" in info["schedulers"] and info["default_scheduler"] in info["schedulers"]
    assert info["limits"]["max_pixels"] == 1024 * 1024 and info["limits"]["max_steps"] == 150
    assert info["defaults"]["model"] == "alice-demo" and info["defaults"]["width"] is None  # the model's native size


def test_store_lists_every_model_with_its_state(keyed_client):
    data = keyed_client.get("/v1/store/models", headers=KEY).json()["data"]
    demo = next(m for m in data if m["name"] == "alice-demo")
    assert demo["kind"] == "pipeline" and demo["type"] == "sd15" and demo["default"] is True
    assert demo["loaded"] is True and demo["size_bytes"] > 0 and demo["id"] == "sd/alice-demo"
