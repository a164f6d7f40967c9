"""Decoding and checking client images before anything is stored."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

ALLOWED = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?P<params>(;[\w-]+=[\w.-]+)*)(;base64)?,", re.I)


class ImageRejected(ValueError):
    """Why a client image was refused; `code` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    content_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.content_type]


def decode_base64_image(value: str, max_bytes: int) -> bytes:
    """Accept raw base64 or a data: URI; refuse anything that isn't base64."""
    value = value.strip()
    match = _DATA_URI.match(value)
    if match:
        if not match.group(0).lower().endswith(";base64,"):
            raise ImageRejected("invalid_image", "data: URIs must be base64-encoded")
        value = value[match.end() :]
    # A cheap bound before decoding: base64 is 4/3 the size of the bytes.
    if len(value) > (max_bytes * 4) // 3 + 8:
        raise ImageRejected("image_too_large", f"image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected("invalid_image", "image is not valid base64") from exc


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Open, bound and fully decode the image once, so the worker never meets a bad one."""
    if not data:
        raise ImageRejected("invalid_image", "image is empty")
    if len(data) > max_bytes:
        raise ImageRejected("image_too_large", f"image is larger than {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its bomb limit; we refuse outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED))
            if img.width * img.height > max_pixels:
                raise ImageRejected(
                    "image_too_large",
                    f"image is {img.width}x{img.height}; at most {max_pixels} pixels are accepted",
                )
            if img.width < 1 or img.height < 1:
                raise ImageRejected("invalid_image", "image has no pixels")
            img.load()  # a truncated or corrupt file fails here, not in the worker
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("image_too_large", f"image refused: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise ImageRejected(
            "invalid_image", "image could not be decoded as PNG, JPEG or WebP"
        ) from exc
    return CheckedImage(data, ALLOWED[img.format or ""], img.width, img.height)


def open_rgb(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
