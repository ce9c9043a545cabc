"""Reading image and mask files with the checks that keep bad files out of a dataset."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medbench.errors import MedbenchError

__all__ = ["MAX_IMAGE_PIXELS", "file_sha256", "read_image", "read_mask_pixels"]

# Largest image accepted, in pixels (about 16k x 16k). Pillow's own limit warns at 89 M
# pixels and raises at twice that; medbench raises at this limit with a named file.
MAX_IMAGE_PIXELS = 16384 * 16384


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise MedbenchError(f"File {path} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise MedbenchError(
                    f"Image {path} has {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} "
                    "(a decompression bomb or a wrong file). Downscale it or remove it from the dataset."
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise MedbenchError(
            f"Cannot read image {path}: {error}. Replace the file with a valid image or remove it "
            "together with its mask."
        ) from error
    return image


def read_image(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, with EXIF orientation applied.

    Grayscale and 16-bit images are scaled to 8 bits and repeated to 3 channels; the
    alpha channel of RGBA images is dropped.
    """
    image = ImageOps.exif_transpose(_open(path))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.max() > 0 else 1.0
        gray = np.round(array / top * 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask_pixels(path: Path) -> np.ndarray:
    """Read a mask file as stored: (H, W) for gray, 1-bit and palette files, (H, W, 3) for colour.

    Palette-mode files return their palette indices; EXIF orientation is applied as for images.
    """
    image = ImageOps.exif_transpose(_open(path))
    if image.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image if image.mode != "1" else image.convert("L"))
    if image.mode == "LA":
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))
