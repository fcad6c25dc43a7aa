"""The folder of generated images (PNG, JPEG, WebP): atomic writes, unguessable names, A1111
metadata, retention.

The A1111 `parameters` text itself is written and read in alice/protocol/a1111.py; in JPEG and
WebP files it sits in the EXIF (alice/images/formats.py).

Image URLs (`/images/{name}`) need no key, so a file name is a capability: 128 random
bits, checked strictly before it ever touches the file system.

Which key made an image is an empty file `.owners/<key name>/<image name>` beside it: not in
the image (whose text anyone with its URL reads), kept as long as the image, the same for
replicas that share the folder; the gallery of a user key lists its own folder's names.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, PngImagePlugin

from alice.images.formats import FORMATS, encode_with_exif, exif_parameters

logger = logging.getLogger("alice.images")

# 32 lowercase hex digits = 128 bits from secrets.token_hex(16); nothing else is a name.
# The suffix names the file format (alice/images/formats.py): .png, .jpg or .webp.
NAME_PATTERN = re.compile(r"[0-9a-f]{32}(?:%s)" % "|".join(re.escape(fmt.suffix) for fmt in FORMATS.values()))
# Temp files start with a dot and never match NAME_PATTERN, so they are never served or listed.
TEMP_PREFIX = ".tmp-"
OWNERS = ".owners"  # dot-led: never a name the store serves or lists
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a key's name (alice.config.KEY_NAME)

def encode_png(image: Image.Image, parameters: str) -> bytes:
    """PNG bytes with a `parameters` text chunk; the same image and text give the same bytes.

    Pillow writes no time chunk and copies no EXIF from the source image, so the output depends
    only on the pixels, the colour profile and the text.
    """
    info = PngImagePlugin.PngInfo()
    # tEXt when the text fits latin-1, else iTXt (UTF-8): exactly what A1111's add_text call writes.
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass(frozen=True)
class StoredImage:
    """One image in the store; `parameters` is filled by `list` (the gallery shows it)."""

    name: str
    size_bytes: int
    created: datetime  # the file's mtime, UTC
    parameters: str | None = None


class ImageStore:
    """Image files in one folder, named by 128 random bits and written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, image: Image.Image, parameters: str, output_format: str = "png", compression: int = 100,
             owner: str | None = None) -> str:
        """Encode `image` with its A1111 parameters as `output_format` (png, jpeg, webp; jpeg and
        webp at quality `compression`) and store it as `owner`'s (a key's name); returns the new name."""
        if output_format == "png":
            name = self.save_png(encode_png(image, parameters))
        else:
            name = self.save_file(encode_with_exif(image, parameters, output_format, compression),
                                  FORMATS[output_format].suffix)
        if owner is not None:
            folder = self._owner_folder(owner)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).touch()
        return name

    def _owner_folder(self, owner: str) -> Path:
        if not OWNER_PATTERN.fullmatch(owner):
            raise ValueError(f"not a key name: {owner!r}")
        return self.root / OWNERS / owner

    def owned_by(self, name: str, owner: str) -> bool:
        """Whether `owner`'s key made the image `name`."""
        return bool(NAME_PATTERN.fullmatch(name)) and (self._owner_folder(owner) / name).is_file()

    def _owned(self, images: list[StoredImage], owner: str | None) -> list[StoredImage]:
        if owner is None:
            return images
        try:
            names = set(os.listdir(self._owner_folder(owner)))
        except FileNotFoundError:
            return []
        return [image for image in images if image.name in names]

    def _forget_owner(self, name: str) -> None:
        """Remove the owner mark of a deleted image (whoever's it was)."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / OWNERS) as owners:
            for owner in owners:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(owner.path, name))

    def save_png(self, data: bytes) -> str:
        return self.save_file(data, ".png")

    def save_file(self, data: bytes, suffix: str) -> str:
        """Write to a temp file, fsync, rename: a reader sees the whole file or none.

        On any error (a full disk, say) the temp file is removed and the error propagates.
        """
        name = secrets.token_hex(16) + suffix
        if not NAME_PATTERN.fullmatch(name):  # a name the store would never serve, list or sweep
            raise ValueError(f"not a suffix of the image store: {suffix!r}")
        # Same folder, so os.replace is a rename within one file system, hence atomic.
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; a front proxy may serve the folder
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the bytes are on disk before the name exists
            os.replace(temp, self.root / name)
        except BaseException:
            with contextlib.suppress(OSError):  # never hide the real error behind a cleanup one
                os.unlink(temp)
            raise
        self._sync_folder()
        return name

    def path_for(self, name: str) -> Path | None:
        """The file of a valid, existing image name; None for anything else.

        The name must match the pattern in full, so no separator, dot-dot or percent escape
        gets through, and the entry must be a regular file (no symlink out of the folder).
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            return None
        path = self.root / name
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        return path if stat.S_ISREG(mode) else None

    def read_parameters(self, name: str) -> str | None:
        """The `parameters` text of an image, or None if the name, file or chunk is missing."""
        path = self.path_for(name)
        if path is None:
            return None
        return _read_parameters(path)

    def list(self, offset: int = 0, limit: int = 50, owner: str | None = None) -> list[StoredImage]:
        """A page of images (`owner`'s only, if named), newest first (by mtime, then name), with
        their parameters."""
        offset, limit = max(offset, 0), max(limit, 0)
        page = self._owned(self._all(), owner)[offset : offset + limit]
        return [
            StoredImage(image.name, image.size_bytes, image.created, _read_parameters(self.root / image.name))
            for image in page
        ]

    def count(self, owner: str | None = None) -> int:
        """How many images the folder holds (`owner`'s, if named)."""
        return len(self._owned(self._all(), owner))

    def total_bytes(self) -> int:
        """The size of all images together (temp files excluded)."""
        return sum(image.size_bytes for image in self._all())

    def delete(self, name: str, owner: str | None = None) -> bool:
        """Remove one image (only if `owner`'s, when named); False when the name is invalid, the
        file is already gone or another key's."""
        path = self.path_for(name)
        if path is None or (owner is not None and not self.owned_by(name, owner)):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        self._forget_owner(name)
        return True

    def remove_partial_files(self, older_than_s: float = 0) -> int:
        """Delete temp files a crash left behind (they never had a servable name).

        Call at start-up only: a save in flight would lose its temp file. In a folder that other
        servers share, pass `older_than_s`: their saves in flight are younger.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.startswith(TEMP_PREFIX) or entry.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if older_than_s and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                        continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            logger.info("removed %d partial image files", removed)
        return removed

    def sweep(
        self, *, max_age: timedelta | None, max_total_bytes: int | None, now: datetime | None = None
    ) -> list[str]:
        """Retention: delete images older than max_age, then the oldest until within max_total_bytes.

        Returns the names this call removed. A file deleted by someone else meanwhile is skipped;
        one that can't be deleted is logged and left, so one bad file doesn't stop the sweep.
        """
        now = now or datetime.now(timezone.utc)
        if now.tzinfo is None:  # a naive time would not compare with the UTC mtimes
            now = now.replace(tzinfo=timezone.utc)
        oldest_first = self._all()[::-1]
        removed: list[str] = []
        total = sum(image.size_bytes for image in oldest_first)
        for image in oldest_first:
            too_old = max_age is not None and now - image.created > max_age
            too_big = max_total_bytes is not None and total > max_total_bytes
            if not (too_old or too_big):
                break  # oldest first: once one stays, every newer one stays too
            try:
                os.unlink(self.root / image.name)
            except FileNotFoundError:
                total -= image.size_bytes  # gone anyway, just not by us
                continue
            except OSError as error:
                logger.warning("retention could not remove an image: %s", error.strerror)
                continue
            self._forget_owner(image.name)
            total -= image.size_bytes
            removed.append(image.name)
        if removed:
            # Counts only: names are capabilities and parameters hold prompts.
            logger.info("retention removed %d images, %d bytes left", len(removed), total)
        return removed

    def _all(self) -> list[StoredImage]:
        """Every image, newest first; entries vanishing during the scan are skipped."""
        images = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not NAME_PATTERN.fullmatch(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted meanwhile
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                created = datetime.fromtimestamp(info.st_mtime, timezone.utc)
                images.append(StoredImage(entry.name, info.st_size, created))
        images.sort(key=lambda image: (image.created, image.name), reverse=True)
        return images

    def _sync_folder(self) -> None:
        """Make the rename itself durable; best effort, since the file's bytes already are."""
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:  # some file systems refuse fsync on a directory
            pass
        finally:
            os.close(fd)


def _read_parameters(path: Path) -> str | None:
    """The A1111 text of a stored image: a PNG's `parameters` chunk, a JPEG's or WebP's EXIF
    UserComment; None for a missing, vanished or unreadable file."""
    if path.suffix != ".png":
        return exif_parameters(path)
    try:
        # Only the chunks before the pixel data are parsed; the image is never decoded.
        with Image.open(path, formats=["PNG"]) as image:
            value = image.info.get("parameters")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return str(value) if isinstance(value, str) else None


def keep_input_image(image: Image.Image, inputs: ImageStore) -> str:
    """Store the decoded input as PNG so the queued job (and its record) can refer to it by name.

    The file is read once by the job and deleted after it, so it is compressed lightly: at
    Pillow's default level a 4096x4096 input took twice as long to write.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return inputs.save_png(buffer.getvalue())
