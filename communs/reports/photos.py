"""Photos of reports: checked, re-encoded as JPEG, stripped of every metadata.

Re-encoding from the decoded pixels leaves nothing of the original file behind: no
EXIF (so no GPS position, camera serial or date), no XMP, no embedded thumbnail, no
trailing data. The orientation EXIF carried is applied to the pixels first.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from communs.core.i18n import lazy_gettext as _l
from communs.core.service import InvalidInput

MAX_PHOTO_BYTES = 8 * 1024 * 1024
MAX_PHOTOS = 3
MAX_SIDE = 2048
MAX_PIXELS = 50_000_000  # beyond: a decompression bomb, not a phone photo
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF"}
QUALITY = 85


@dataclass(frozen=True)
class Encoded:
    content: bytes
    width: int
    height: int


def reencode(data: bytes, filename: str = "") -> Encoded:
    """The photo as a clean JPEG; a clear French message for anything else."""
    label = filename or str(_l("la photo"))
    if len(data) > MAX_PHOTO_BYTES:
        raise InvalidInput(
            _l("« {name} » dépasse {limit} Mo.").format(
                name=label, limit=MAX_PHOTO_BYTES // (1024 * 1024)
            ),
            field="photos",
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise UnidentifiedImageError(image.format)
            if image.width * image.height > MAX_PIXELS:
                raise InvalidInput(
                    _l("« {name} » est une image trop grande.").format(name=label),
                    field="photos",
                )
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInput(
            _l("« {name} » n'est pas une photo lisible (JPEG, PNG, WebP ou GIF).").format(
                name=label
            ),
            field="photos",
        ) from None
    pixels = upright.convert("RGB")
    pixels.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=QUALITY, optimize=True)
    return Encoded(out.getvalue(), pixels.width, pixels.height)


def check_count(count: int) -> None:
    if count > MAX_PHOTOS:
        raise InvalidInput(
            _l("{limit} photos au plus par signalement.").format(limit=MAX_PHOTOS), field="photos"
        )


async def read_uploads(uploads: list[Any]) -> list[Encoded]:
    """Uploaded files of a form, re-encoded off the event loop; too many are refused
    before any is read."""
    files = [upload for upload in uploads if not isinstance(upload, str) and upload.filename]
    check_count(len(files))
    return [
        await asyncio.to_thread(reencode, await upload.read(), upload.filename) for upload in files
    ]
