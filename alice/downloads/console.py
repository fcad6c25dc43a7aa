"""The model manager from a terminal: the same DownloadManager, with a progress bar."""

from __future__ import annotations

import sys
import threading
import time

from tqdm import tqdm

from alice.config import Settings
from alice.downloads.manager import DownloadManager, DownloadTask


def manager_for(settings: Settings) -> DownloadManager:
    # Its own folder: a server running beside the CLI keeps its own task list.
    return DownloadManager.for_settings(settings, settings.data_dir / "downloads-cli")


def run_with_progress(manager: DownloadManager, task: DownloadTask) -> DownloadTask:
    """Run the task in a thread and draw its progress until it ends (Ctrl-C cancels it)."""
    # Said before the first byte, from the source's listing: a 30 GB repo is no surprise.
    manager.on_planned = lambda planned: tqdm.write(
        f"{planned.name}: {planned.totalSize / 1e9:.2f} GB ({planned.totalSize} bytes) to download", file=sys.stderr)
    worker = threading.Thread(target=manager.run_now, args=(task,), daemon=True)
    worker.start()
    with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=task.name) as bar:
        try:
            while worker.is_alive():
                if task.totalSize and bar.total != task.totalSize:
                    bar.total = task.totalSize
                bar.n = task.downloadedSize
                bar.set_postfix_str(task.status)
                bar.refresh()
                time.sleep(0.2)
        except KeyboardInterrupt:
            manager.cancel(task.id)
            worker.join()
        bar.n = task.downloadedSize
        bar.set_postfix_str(task.status)
    return task
