"""The web page's files under /web/ and the admin JSON it reads: gallery, settings, the store."""

from __future__ import annotations

import re
from urllib.parse import urljoin

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
    files = [path for path in WEB_DIR.rglob("*") if path.suffix in (".html", ".js", ".css")]
    assert len(files) > 3
    for path in files:
        text, name = path.read_text(), str(path.relative_to(WEB_DIR))
        assert re.findall(r"https?://[\w-]+\.[\w.-]+|(?:src|href)=[\"']//|url\(\s*[\"']?(?:https?:)?//", text) == [], name
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, (name, sink)


# `import {a, b as c} from "./x.js";`, `import "./x.js";` (our modules import nothing else), and
# what a module exports by name.
IMPORT = re.compile(r'^import\s*(?:\{([^}]*)\}\s*from\s*)?"([^"]+)";', re.MULTILINE)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|const|let|class)\s+([\w$]+)", re.MULTILINE)


def page_modules(client) -> dict[str, str]:
    """Every module the page loads, by URL path, fetched as the browser does: from the page's
    <script type="module">, then each module's imports, resolved against the importing URL."""
    page = client.get("/web/").text
    entries = re.findall(r'<script type="module" src="([^"]+)"></script>', page)
    assert entries == ["app.js"] and "<script>" not in page and " defer" not in page
    found: dict[str, str] = {}
    todo = [urljoin("/web/", entry) for entry in entries]
    while todo:
        url = todo.pop()
        if url in found:
            continue
        response = client.get(url)
        assert response.status_code == 200, f"{url}: {response.status_code}"
        # A module is refused by the browser under nosniff unless it is served as JavaScript.
        assert response.headers["content-type"] == "text/javascript; charset=utf-8", url
        assert response.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self';")
        found[url] = response.text
        for _, specifier in IMPORT.findall(response.text):
            # Browsers refuse bare names ("dom.js") without an import map: only relative paths.
            assert specifier.startswith(("./", "../")) and specifier.endswith(".js"), (url, specifier)
            todo.append(urljoin(url, specifier))
    return found


def test_every_module_the_page_imports_is_served_as_javascript_without_a_key(keyed_client):
    modules = page_modules(keyed_client)
    # Every script file in the folder is part of the page (none left behind by a split or a rename).
    on_disk = {"/web/" + str(path.relative_to(WEB_DIR)) for path in WEB_DIR.rglob("*.js")}
    assert set(modules) == on_disk and len(on_disk) > 10
    # The page names them all for preloading, so they load at once, not one import level at a time.
    preloads = re.findall(r'<link rel="modulepreload" href="([^"]+)">', keyed_client.get("/web/").text)
    assert len(preloads) == len(set(preloads)) and {urljoin("/web/", path) for path in preloads} == on_disk - {"/web/app.js"}


def test_every_imported_name_is_exported_by_its_module(keyed_client):
    modules = page_modules(keyed_client)
    exports = {url: set(EXPORT.findall(text)) for url, text in modules.items()}
    for url, text in modules.items():
        # No globals: modules share only what they export.
        assert not re.search(r"\b(?:window|globalThis|self)\.[\w$]+\s*=[^=]", text), url
        for names, specifier in IMPORT.findall(text):
            wanted = {name.split(" as ")[0].strip() for name in names.split(",") if name.strip()}
            missing = wanted - exports[urljoin(url, specifier)]
            assert not missing, f"{url} imports {sorted(missing)} that {specifier} does not export"


@pytest.mark.parametrize("path", [
    "../http/app.py", "../../service.py", ".hidden.js", "nope.js", "app.js/", "a\\..\\app.js",
    "/etc/passwd", "", "index.html/..", "../web/app.js", "__init__.py", "x/../app.js",
    "lib/../app.js", "lib/", "lib//dom.js", "pages/.x.js", "lib",
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
    assert static_file("lib/dom.js") == WEB_DIR / "lib" / "dom.js"


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


def test_a_browser_with_a_current_copy_gets_304_and_a_stale_one_the_file(keyed_client):
    """The page's files are revalidated on every load (no-cache): an unchanged file costs a 304."""
    first = keyed_client.get("/web/pages/generate.js")
    tag = first.headers["etag"]
    again = keyed_client.get("/web/pages/generate.js", headers={"If-None-Match": f'"other", W/{tag}'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag and again.headers["cache-control"] == "no-cache"
    assert "content-security-policy" in again.headers
    stale = keyed_client.get("/web/pages/generate.js", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == first.content
    assert keyed_client.get("/web/", headers={"If-None-Match": keyed_client.get("/web/").headers["etag"]}).status_code == 304


def test_settings_serve_each_settings_limits_as_the_schema_states_them(keyed_client):
    """The page's form takes its min/max from here: the limits of the schema the API docs
    serve, so there is no second copy of them to drift."""
    info = keyed_client.get("/v1/settings", headers=KEY).json()
    document = keyed_client.get("/docs.json", headers=KEY).json()
    body = document["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    while "$ref" in body:
        body = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert {"steps", "guidance_scale", "width"} <= body["properties"].keys()
    words = ("minimum", "exclusiveMinimum", "maximum", "multipleOf", "minLength", "maxLength", "maxItems")
    # The document states this server's own maximum of images (ALICE_MAX_IMAGES_PER_REQUEST) as
    # num_images' maximum; /v1/settings serves it apart, under `limits`.
    per_request = info["limits"]["max_images_per_request"]
    assert per_request < info["setting_limits"]["num_images"]["maximum"]  # so the next line tells them apart
    served = {**info["setting_limits"], "num_images": {**info["setting_limits"]["num_images"], "maximum": per_request}}
    for name, schema in body["properties"].items():
        stated = {word: part[word] for part in (schema, *schema.get("anyOf", ())) for word in words if word in part}
        assert served.get(name, {}) == stated, name
    assert info["setting_limits"]["guidance_scale"] == {"minimum": 0, "maximum": 30}
    assert info["setting_limits"]["strength"] == {"exclusiveMinimum": 0, "maximum": 1}
    assert info["limits"]["max_guidance_scale"] == info["setting_limits"]["guidance_scale"]["maximum"]
    assert info["defaults"]["steps"] == 25 and info["defaults"]["guidance_scale"] == 7.5
