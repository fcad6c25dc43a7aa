"""The download manager on its own, against the stand-in sources: which addresses it may reach,
how big a download may grow, what a finished task leaves behind, and how long tasks are kept."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from alice.downloads.fetch import UNREACHABLE
from alice.downloads.manager import KEEP_FINISHED, DownloadManager
from harness.environment import private_bentoml_home
from harness.lora import write_demo_lora
from harness.ports import free_port
from tests.downloads.fake_sources import FakeSources, start

LORA_PATH = "/api/download/models/1"


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Path:
    return write_demo_lora(tmp_path_factory.mktemp("lora"))


@contextlib.contextmanager
def serving(lora: Path) -> Iterator[FakeSources]:
    """A fake CivitAI on loopback whose model 1 is `lora`."""
    sources = FakeSources()
    server = start(sources)
    sources.civitai_files[1] = lora
    try:
        yield sources
    finally:
        server.shutdown()


@pytest.fixture
def source(lora):
    """A configured source (the operator's CivitAI), on loopback."""
    with serving(lora) as sources:
        yield sources


@pytest.fixture
def lan_host(lora):
    """Another server on loopback: configured nowhere, so like a host on the LAN."""
    with serving(lora) as sources:
        yield sources


def manager(folder: Path, source: FakeSources, **limits) -> DownloadManager:
    return DownloadManager(folder, source.url, None, **limits)


def run_url(manager: DownloadManager, url: str):
    task = manager.run_now(manager.url_download(url, "model.safetensors", is_lora=True))
    manager.stop()
    return task


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != "tasks.json")


def test_an_unconfigured_loopback_host_is_refused_by_default_and_allowed_when_listed(tmp_path, source, lan_host):
    refused = run_url(manager(tmp_path / "a", source), lan_host.url + LORA_PATH)
    assert refused.status == "failed" and refused.error.endswith(UNREACHABLE)
    assert lan_host.seen_headers == []  # not one request reached it
    with private_bentoml_home(tmp_path / "bentoml"):
        allowed = run_url(manager(tmp_path / "b", source, allowed_networks=[ipaddress.ip_network("127.0.0.0/8")]),
                          lan_host.url + LORA_PATH)
    assert allowed.status == "completed", allowed.error
    assert len(lan_host.seen_headers) == 1


def test_redirects_are_checked_hop_by_hop(tmp_path, source, lan_host):
    """The configured source is trusted, not the places it redirects to."""
    for target in (lan_host.url + LORA_PATH, "http://169.254.169.254/latest/meta-data/x.safetensors",
                   f"http://[::ffff:127.0.0.1]:{lan_host.url.rsplit(':', 1)[1]}{LORA_PATH}"):
        task = run_url(manager(tmp_path / "redirects", source), f"{source.url}/redirect?to={target}")
        assert task.status == "failed" and task.error.endswith(UNREACHABLE), (target, task.error)
    assert lan_host.seen_headers == []


def test_refused_closed_and_unresolvable_addresses_read_the_same(tmp_path, source, lan_host):
    """The errors cannot be used to map which hosts and ports answer."""
    lan_port = lan_host.url.rsplit(":", 1)[1]
    closed_port = f"http://127.0.0.1:{free_port()}/x.safetensors"
    errors = set()
    for url in (lan_host.url + LORA_PATH, closed_port, "http://0.0.0.0/x.safetensors",
                f"http://localhost:{lan_port}{LORA_PATH}", f"http://2130706433:{lan_port}{LORA_PATH}",
                "http://no-such-host.invalid/x.safetensors"):
        task = run_url(manager(tmp_path / "same", source), url)
        errors.add(task.error.split(": ", 1)[1])
    assert lan_host.seen_headers == []
    # Allowed, but nothing listens there: a real connection failure reads the same.
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    task = run_url(manager(tmp_path / "same", source, allowed_networks=loopback), closed_port)
    errors.add(task.error.split(": ", 1)[1])
    assert errors == {UNREACHABLE}


def test_the_size_cap_stops_a_download_with_or_without_a_content_length(tmp_path, source, lora):
    cap = lora.stat().st_size // 2
    for no_length in (False, True):
        source.no_length = no_length
        folder = tmp_path / f"cap-{no_length}"
        task = run_url(manager(folder, source, max_bytes=cap), source.url + LORA_PATH)
        assert task.status == "failed" and "larger than" in task.error and "ALICE_DOWNLOAD_MAX_GB" in task.error
        assert task.downloadedSize <= cap if no_length else task.downloadedSize == 0
        assert leftovers(folder) == []


def test_the_disk_reserve_stops_a_download_of_unknown_size_while_it_streams(tmp_path, source):
    big = tmp_path / "big.safetensors"
    big.write_bytes(bytes(32 << 20))
    source.civitai_files[2] = big
    source.no_length = True
    # A reserve that leaves 16 MiB: room for a download of about 5 MiB and its conversion and
    # import. It starts (the size is unknown), then stops part-way.
    reserve = shutil.disk_usage(tmp_path).free - (16 << 20)
    task = run_url(manager(tmp_path / "disk", source, disk_reserve_bytes=reserve), source.url + "/api/download/models/2")
    assert task.status == "failed" and "not enough disk space" in task.error, task.error
    assert 0 < task.downloadedSize < 16 << 20
    assert leftovers(tmp_path / "disk") == []


def test_a_failed_download_leaves_no_partial_file(tmp_path, source):
    source.break_always.add(LORA_PATH)
    folder = tmp_path / "broken"
    task = run_url(manager(folder, source), source.url + LORA_PATH)
    assert task.status == "failed" and task.downloadedSize > 0, task.error
    assert leftovers(folder) == []
    assert "broke off 3 times" in task.error


def test_finished_tasks_are_pruned_and_unfinished_ones_kept(tmp_path, source):
    downloads = manager(tmp_path / "many", source)  # not started: tasks wait until cancelled
    ids = [downloads.url_download(f"{source.url}/{n}.safetensors", None, False).id for n in range(KEEP_FINISHED + 5)]
    waiting = downloads.url_download(f"{source.url}/waiting.safetensors", None, False)
    for task_id in ids:
        downloads.cancel(task_id)
    listed = {t.id for t in downloads.list()}
    assert listed == set(ids[5:]) | {waiting.id}
    downloads.stop()
    saved = json.loads((tmp_path / "many" / "tasks.json").read_text())
    assert {record["id"] for record in saved} == listed


def test_state_is_private_and_stray_partial_files_go_at_start(tmp_path, source):
    """As an older version left it: a folder and task file readable by all, a leaked token in
    an error, the partial file of a failed task."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    stray = folder / "dl-0000000000000000"
    stray.mkdir()
    (stray / "model.safetensors.part").write_bytes(b"x" * 1000)
    (folder / "tasks.json").write_text(json.dumps([{
        "source": "url", "request": {}, "name": "old", "id": stray.name, "status": "failed",
        "error": "the source answered HTTP 500 for https://user:pw@example.com/a.safetensors?token=t0ken",
    }]))
    (folder / "tasks.json").chmod(0o644)
    downloads = manager(folder, source)
    assert "t0ken" not in downloads.get(stray.name).error and "pw" not in downloads.get(stray.name).error
    downloads.stop()
    assert not stray.exists()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "tasks.json").stat().st_mode) == 0o600
    assert "t0ken" not in (folder / "tasks.json").read_text()
