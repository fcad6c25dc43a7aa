"""The download queue: one download at a time in its own thread, then an import into the store.

Each task works in `ALICE_DATA_DIR/downloads/<task id>/`; partial files stay there between
tries so an interrupted download resumes, and the folder goes once the task ends, however it
ends. Tasks are written to `tasks.json` (readable by the service user only: a URL may carry a
token), so unfinished ones resume after a restart; the newest finished ones are kept for the
status list. Nothing reaches the model store until every file is complete and verified, so a
failed or cancelled download leaves no half model behind. What a task shows and logs has the
secrets of its URL redacted (`fetch.redact_url`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from alice.models import checkpoints
from alice.models import store as model_store
from alice.models.transformer_imports import check_base_for
from alice.config import Settings
from alice.downloads import huggingface
from alice.downloads.addresses import AddressPolicy, Network, checked_client
from alice.downloads.civitai import CivitAI, CivitAIError, RemoteFile
from alice.downloads.fetch import DownloadCancelled, DownloadFailed, fetch_file, redact_urls

logger = logging.getLogger("alice.downloads")

ACTIVE = ("queued", "downloading", "importing")
KEEP_FINISHED = 100  # finished tasks kept for the status list, newest first


@dataclass
class DownloadTask:
    source: str  # civitai | huggingface | url
    request: dict[str, Any]  # what was asked, to run (or resume) the task
    name: str  # the model name it will have in the store
    id: str = field(default_factory=lambda: "dl-" + secrets.token_hex(8))
    status: str = "queued"
    totalSize: int | None = None
    downloadedSize: int = 0
    speed: float = 0.0  # bytes per second, recent
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    model: str | None = None  # the stored model's id once imported

    @property
    def progress(self) -> float:
        if self.status == "completed":
            return 1.0
        return min(1.0, self.downloadedSize / self.totalSize) if self.totalSize else 0.0

    def public(self) -> dict[str, Any]:
        view = asdict(self)
        view.pop("request")
        return {**view, "progress": round(self.progress, 4), "object": "download"}


def model_name_from(text: str) -> str:
    """A store name from a repo id, file name or CivitAI title: lowercase, safe, at most 63."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:63].strip("-._")
    return name or "model"


class DownloadManager:
    def __init__(
        self,
        folder: Path,
        civitai_url: str,
        civitai_token: str | None,
        *,
        allowed_networks: Iterable[Network] = (),
        max_bytes: int | None = None,
        disk_reserve_bytes: int = 0,
    ) -> None:
        self.folder = folder
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder.chmod(0o700)  # also when an older version made it readable by all
        self.max_bytes = max_bytes
        self.disk_reserve_bytes = disk_reserve_bytes
        # The configured hub and CivitAI are the operator's choice (and may be local); any other
        # address, and wherever they redirect, must be public or in allowed_networks.
        policy = AddressPolicy(allowed_networks, trusted_urls=lambda: (huggingface.endpoint(), civitai_url))
        self._client = checked_client(policy, httpx.Timeout(30, read=120))
        self.civitai = CivitAI(civitai_url, civitai_token, self._client)
        self._lock = threading.Condition()
        self._tasks: dict[str, DownloadTask] = {}
        self._waiting: collections.deque[DownloadTask] = collections.deque()
        self._cancelled: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Told each task's size once its source has said it, before the first byte (the CLI prints it).
        self.on_planned: Callable[[DownloadTask], None] = lambda task: None
        self._restore()

    @classmethod
    def for_settings(cls, settings: Settings, folder: Path) -> DownloadManager:
        token = settings.civitai_api_key.get_secret_value() if settings.civitai_api_key else None
        return cls(
            folder, settings.civitai_url, token,
            allowed_networks=settings.download_allowed_networks,
            max_bytes=int(settings.download_max_gb * 1e9),
            disk_reserve_bytes=int(settings.download_disk_reserve_gb * 1e9),
        )

    # -- asking ---------------------------------------------------------------------
    def civitai_download(self, model_id: int, version_id: int | None, file_id: int | None, model_type: str,
                         base: str | None = None) -> DownloadTask:
        """A CivitAI version's file; a transformer-family checkpoint (a FLUX fine-tune, a GGUF)
        takes its text encoders and VAE from the stored model `base`."""
        request = {"modelId": model_id, "versionId": version_id, "fileId": file_id, "modelType": model_type,
                   "base": base}
        return self._add(DownloadTask("civitai", request, model_name_from(f"civitai-{model_id}")))

    def huggingface_download(self, repo_id: str, filename: str | None, revision: str, *,
                             without_transformer: bool = False, base: str | None = None) -> DownloadTask:
        """A diffusers repo (without its transformer's weights: a base, named `<repo>-base`), or
        one file of it (a transformer-only .safetensors or .gguf onto the stored model `base`)."""
        if without_transformer and filename:
            raise ValueError("withoutTransformer is for a whole diffusers repo, not one file")
        request = {"modelId": repo_id, "filename": filename, "revision": revision,
                   "withoutTransformer": without_transformer, "base": base}
        stem = Path(filename).stem if filename else repo_id.split("/")[-1] + ("-base" if without_transformer else "")
        return self._add(DownloadTask("huggingface", request, model_name_from(stem)))

    def url_download(self, url: str, filename: str | None, is_lora: bool) -> DownloadTask:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        filename = filename or Path(url.split("?", 1)[0]).name or "model.safetensors"
        request = {"url": url, "filename": filename, "isLora": is_lora}
        return self._add(DownloadTask("url", request, model_name_from(Path(filename).stem)))

    def list(self) -> list[DownloadTask]:
        with self._lock:
            return sorted(self._tasks.values(), key=lambda t: t.created, reverse=True)

    def get(self, task_id: str) -> DownloadTask | None:
        return self._tasks.get(task_id)

    def cancel(self, task_id: str) -> DownloadTask | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.status not in ACTIVE:
                return task
            self._cancelled.add(task_id)
            if task in self._waiting:
                self._waiting.remove(task)
                self._end(task, "cancelled")
        return task

    # -- the worker -----------------------------------------------------------------
    def start(self) -> DownloadManager:
        self._thread = threading.Thread(target=self._work, name="alice-downloads", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread:
            self._thread.join(timeout)
        self._client.close()

    def run_now(self, task: DownloadTask) -> DownloadTask:
        """Run one task in this thread (the CLI's way), returning it finished."""
        with self._lock:
            if task in self._waiting:
                self._waiting.remove(task)
        self._run(task)
        return task

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                task = self._waiting.popleft()
            self._run(task)

    def _run(self, task: DownloadTask) -> None:
        workdir = self.folder / task.id
        try:
            self._set(task, status="downloading")
            path, is_lora, is_pipeline = self._download(task, workdir)
            self._set(task, status="importing")
            stored = self._import(path, task.name, is_lora=is_lora, is_pipeline=is_pipeline, source=task.source,
                                  base=task.request.get("base"))
            self._set(task, model="sd/" + stored.name)
            self._end(task, "completed")
        except DownloadCancelled:
            self._end(task, "cancelled")
        except (DownloadFailed, CivitAIError, huggingface.HubError, ValueError, OSError) as exc:
            self._end(task, "failed", str(exc))
        except Exception as exc:  # the queue must survive any one task
            logger.error("download %s failed: %s", task.id, redact_urls("".join(traceback.format_exception(exc))))
            self._end(task, "failed", f"{type(exc).__name__}: {exc}")

    def _download(self, task: DownloadTask, workdir: Path) -> tuple[Path, bool, bool]:
        """Fetch every file of the task into workdir; (path to import, is LoRA, is pipeline)."""
        request = task.request
        if task.source == "civitai":
            remote = self.civitai.file_for(request["modelId"], request.get("versionId"), request.get("fileId"),
                                           request.get("modelType", "Checkpoint"))
            self._set(task, name=model_name_from(remote.suggested_name))
            if remote.family and not remote.is_lora:  # told by CivitAI's baseModel: refuse before the bytes
                check_base_for(remote.family, request.get("base"), remote.filename, how=(
                    f"download it with one as its base (`alice models download civitai {request['modelId']} "
                    "--base <a stored {kind} model>`, or \"base\" in the request)"))
            return self._fetch_remote(task, remote, workdir, self.civitai.headers), remote.is_lora, False
        if task.source == "url":
            remote = RemoteFile(request["url"], request["filename"], None, None, request["isLora"], task.name)
            return self._fetch_remote(task, remote, workdir, {}), remote.is_lora, False
        plan = huggingface.plan(request["modelId"], request.get("filename"), request.get("revision") or "main",
                                without_transformer=bool(request.get("withoutTransformer")))
        headers = {"Authorization": f"Bearer {huggingface.token()}"} if huggingface.token() else {}
        # The whole size is known from the listing before the first byte: shown, and checked.
        planned = sum(f.size or 0 for f in plan.files)
        logger.info("download %s: %d files of %s, %d bytes", task.id, len(plan.files), plan.repo_id, planned)
        self._planned(task, planned or None)
        done_before = 0
        for f in plan.files:
            target = workdir / huggingface.plain_name(f.path)
            fetch_file(
                self._client, huggingface.file_url(plan.repo_id, plan.commit, f.path), target,
                headers=headers, sha256=huggingface.file_sha256(f),
                progress=self._reporter(task, done_before), cancelled=lambda: task.id in self._cancelled,
            )
            done_before += f.size or target.stat().st_size
        if plan.is_pipeline:
            return workdir, False, True
        path = workdir / huggingface.plain_name(plan.files[0].path)
        return path, path.suffix == ".safetensors" and _looks_like_lora(path), False

    def _fetch_remote(self, task: DownloadTask, remote: RemoteFile, workdir: Path, headers: dict[str, str]) -> Path:
        if remote.size_bytes:
            self._planned(task, remote.size_bytes)
        filename = Path(remote.filename).name or "model.safetensors"
        return fetch_file(
            self._client, remote.url, workdir / filename, headers=headers, sha256=remote.sha256,
            progress=self._reporter(task, 0), cancelled=lambda: task.id in self._cancelled,
        )

    def _planned(self, task: DownloadTask, size: int | None) -> None:
        """The size the source announced, checked against the cap and the disk, then shown."""
        self._check_room(0, size)
        self._set(task, totalSize=size)
        if size:
            self.on_planned(task)

    def _import(self, path: Path, name: str, *, is_lora: bool, is_pipeline: bool, source: str,
                base: str | None = None) -> model_store.StoredModel:
        if is_pipeline:  # a transformer family's folder without transformer weights is stored as a base
            return checkpoints.import_pipeline_folder(path, name, source=source)
        if is_lora:
            return checkpoints.import_lora_file(path, name, source=source)
        return checkpoints.import_checkpoint_file(path, name, source=source, base=base)

    def _reporter(self, task: DownloadTask, done_before: int) -> Callable[[int, int | None], None]:
        """Progress for the task, and a stop when it outgrows the size cap or the disk."""
        started, first = time.monotonic(), None

        def report(done: int, total: int | None) -> None:
            nonlocal first
            first = done if first is None else first
            elapsed = time.monotonic() - started
            if total and not task.totalSize:
                task.totalSize = total
            self._check_room(done_before + done, task.totalSize)
            task.downloadedSize = done_before + done
            task.speed = round((done - first) / elapsed, 1) if elapsed > 0 else 0.0

        return report

    def _check_room(self, done: int, expected: int | None) -> None:
        """Fail when the task is (or says it will be) larger than the cap, or when the disk cannot
        take the rest of it, its conversion and the store's copy and still keep the reserve.
        Checked before the first byte and again as bytes arrive, so a source that sends no size,
        or a wrong one, is stopped too."""
        size = max(done, expected or 0)
        if self.max_bytes is not None and size > self.max_bytes:
            raise DownloadFailed(
                f"the download is larger than the {self.max_bytes / 1e9:g} GB allowed (ALICE_DOWNLOAD_MAX_GB)"
            )
        # Still to come: the rest of the download, a single file's converted folder and the
        # store's copy of it; the part already on disk is no longer free space.
        needed = 3 * (size - done) + 2 * done + self.disk_reserve_bytes
        free = shutil.disk_usage(self.folder).free
        if needed > free:
            raise DownloadFailed(
                f"not enough disk space: {needed / 1e9:.1f} GB more needed (download, conversion, import and "
                f"the {self.disk_reserve_bytes / 1e9:g} GB reserve of ALICE_DOWNLOAD_DISK_RESERVE_GB), "
                f"{free / 1e9:.1f} GB free"
            )

    # -- bookkeeping ----------------------------------------------------------------
    def _add(self, task: DownloadTask) -> DownloadTask:
        with self._lock:
            self._tasks[task.id] = task
            self._waiting.append(task)
            self._lock.notify_all()
        self._save()
        logger.info("download %s queued (%s)", task.id, task.source)
        return task

    def _set(self, task: DownloadTask, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(task, key, value)
        self._save()

    def _end(self, task: DownloadTask, status: str, error: str | None = None) -> None:
        error = redact_urls(error) if error else None
        task.status, task.error, task.finished = status, error, time.time()
        self._cancelled.discard(task.id)
        # Its partial files go however it ended: a retry is a new task, and starts over.
        shutil.rmtree(self.folder / task.id, ignore_errors=True)
        self._prune()
        self._save()
        logger.info("download %s %s%s", task.id, status, f": {error}" if error else "")

    def _prune(self) -> None:
        """Forget all but the newest KEEP_FINISHED finished tasks (queued and running ones stay)."""
        with self._lock:
            finished = sorted((t for t in self._tasks.values() if t.status not in ACTIVE),
                              key=lambda t: t.finished or t.created, reverse=True)
            for task in finished[KEEP_FINISHED:]:
                del self._tasks[task.id]

    def _save(self) -> None:
        # Under the lock: the worker and request threads both save, through one temp file,
        # created private: the records hold the URLs as given, tokens and all.
        with self._lock:
            records = json.dumps([asdict(t) for t in self._tasks.values()]).encode()
            temp = self.folder / "tasks.json.tmp"
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # a leftover temp file keeps its old mode through O_CREAT
                file.write(records)
                file.flush()
                os.fsync(file.fileno())
            temp.replace(self.folder / "tasks.json")

    def _restore(self) -> None:
        path = self.folder / "tasks.json"
        if path.exists():
            for record in json.loads(path.read_text()):
                task = DownloadTask(**record)
                task.error = redact_urls(task.error) if task.error else None  # saved by an older version
                if task.status in ACTIVE:
                    task.status = "queued"  # resumes from its partial files
                    self._waiting.append(task)
                self._tasks[task.id] = task
            self._prune()
            self._save()  # rewritten private, whatever mode an older version left it with
        # Partial files of tasks that ended (or were forgotten) before their folder went.
        for workdir in self.folder.glob("dl-*"):
            if workdir.is_dir() and workdir.name not in {t.id for t in self._waiting}:
                shutil.rmtree(workdir, ignore_errors=True)


def _looks_like_lora(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return any("lora" in key for key in weights.keys())
