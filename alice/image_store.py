"""The folder of generated PNGs: atomic writes, unguessable names, A1111 metadata, retention."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, PngImagePlugin

logger = logging.getLogger("alice.images")

# 128 random bits: the name is the capability, since image URLs need no key.
NAME_PATTERN = re.compile(r"^[0-9a-f]{32}\.png$")
TEMP_PREFIX = ".tmp-"


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
    """The `parameters` text AUTOMATIC1111 writes, which SD tools read back."""
    settings = {
        "Steps": str(steps),
        "Sampler": sampler,
        "CFG scale": str(float(guidance_scale)),
        "Seed": str(seed),
        "Size": f"{width}x{height}",
        "Model": model,
        **(extra or {}),
    }
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items()))
    return "\n".join(lines)


def parse_a1111_parameters(text: str) -> dict[str, object]:
    """Read A1111 `parameters` text back: prompt, negative_prompt and the settings line."""
    lines = text.split("\n")
    settings_line = lines.pop() if lines and re.match(r"^Steps: ", lines[-1]) else ""
    negative: list[str] = []
    prompt: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt: ") or negative:
            negative.append(line.removeprefix("Negative prompt: "))
        else:
            prompt.append(line)
    settings = dict(
        (key.strip(), value.strip())
        for key, _, value in (part.partition(":") for part in settings_line.split(", "))
        if key
    )
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), "settings": settings}


def encode_png(image: Image.Image, parameters: str) -> bytes:
    """PNG bytes with a `parameters` text chunk; the same image and text give the same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)  # iTXt for text latin-1 cannot hold, as A1111 does
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass(frozen=True)
class StoredImage:
    name: str
    size_bytes: int
    created: datetime


class ImageStore:
    """PNG files in one folder, named by 128 random bits and written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, image: Image.Image, parameters: str) -> str:
        return self.save_png(encode_png(image, parameters))

    def save_png(self, data: bytes) -> str:
        """Write to a temp file, fsync, rename: a reader sees the whole file or none."""
        name = secrets.token_hex(16) + ".png"
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, self.root / name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return name

    def path_for(self, name: str) -> Path | None:
        """The file of a valid, existing image name; None for anything else (no traversal)."""
        if not NAME_PATTERN.fullmatch(name):
            return None
        path = self.root / name
        return path if path.is_file() else None

    def read_parameters(self, name: str) -> str | None:
        path = self.path_for(name)
        if path is None:
            return None
        with Image.open(path) as image:
            return image.info.get("parameters")

    def list(self, offset: int = 0, limit: int = 50) -> list[StoredImage]:
        """Newest first."""
        return self._all()[offset : offset + limit]

    def count(self) -> int:
        return len(self._all())

    def delete(self, name: str) -> bool:
        path = self.path_for(name)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        return True

    def total_bytes(self) -> int:
        return sum(image.size_bytes for image in self._all())

    def remove_partial_files(self) -> int:
        """Delete temp files a crash left behind (they never had a servable name)."""
        removed = 0
        for path in self.root.glob(TEMP_PREFIX + "*"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def sweep(
        self, *, max_age: timedelta | None, max_total_bytes: int | None, now: datetime | None = None
    ) -> list[str]:
        """Retention: delete images older than max_age, then the oldest until under max_total_bytes."""
        now = now or datetime.now(timezone.utc)
        oldest_first = list(reversed(self._all()))
        doomed: list[StoredImage] = []
        if max_age is not None:
            doomed = [image for image in oldest_first if now - image.created > max_age]
        if max_total_bytes is not None:
            kept = oldest_first[len(doomed) :]
            total = sum(image.size_bytes for image in kept)
            for image in kept:
                if total <= max_total_bytes:
                    break
                doomed.append(image)
                total -= image.size_bytes
        for image in doomed:
            (self.root / image.name).unlink(missing_ok=True)
        if doomed:
            logger.info("retention removed %d images", len(doomed))
        return [image.name for image in doomed]

    def _all(self) -> list[StoredImage]:
        images = []
        for entry in os.scandir(self.root):
            if not NAME_PATTERN.fullmatch(entry.name):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # deleted meanwhile
                continue
            created = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
            images.append(StoredImage(entry.name, stat.st_size, created))
        images.sort(key=lambda image: (image.created, image.name), reverse=True)
        return images
