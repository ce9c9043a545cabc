"""Reading image and mask files with the checks that keep bad files out of a dataset."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medbench.errors import MedbenchError

__all__ = ["MAX_IMAGE_PIXELS", "exif_orientation", "file_sha256", "read_image", "read_mask_pixels", "read_volume"]

# Largest image accepted, in pixels: Pillow's default limit (89,478,485, about 9.5k x
# 9.5k, in Pillow 11). Pillow only warns up to twice that limit, so medbench checks it
# itself and names the file. Beyond twice the limit Pillow raises DecompressionBombError.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
BOMB_ADVICE = "(a decompression bomb or a wrong file). Downscale it or remove it from the dataset."
ORIENTATION_TAG = 0x0112  # EXIF "Orientation"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_pixel_count(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise MedbenchError(
            f"Image {path} has {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} {BOMB_ADVICE}"
        )


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise MedbenchError(f"File {path} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with the file name
            image = Image.open(path)
            _check_pixel_count(path, *image.size)
            image.load()
    except Image.DecompressionBombError as error:
        raise MedbenchError(f"Image {path} is over the limit of {MAX_IMAGE_PIXELS} pixels: {error} {BOMB_ADVICE}") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
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


def exif_orientation(path: Path) -> int:
    """EXIF orientation tag of an image file: 1 (upright) when absent or unreadable."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(ORIENTATION_TAG, 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 1  # the reading step raises the clear error for a broken file


def read_volume(path: Path) -> np.ndarray:
    """Read a 2D NIfTI (`.nii`, `.nii.gz`) or MetaImage (`.mhd` with its `.raw`) image as (H, W).

    NIfTI goes through nibabel, whose arrays are indexed (x, y), so they are transposed
    to (row, column); MetaImage goes through SimpleITK, whose arrays are already (z, y, x).
    A single trailing or leading slice axis is dropped. Raises for missing, truncated or
    unreadable files and for more than one slice.
    """
    if not path.is_file():
        raise MedbenchError(f"File {path} does not exist.")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel

            volume = nibabel.load(str(path))
            if len(volume.shape) >= 2:
                _check_pixel_count(path, volume.shape[0], volume.shape[1])
            array = np.asanyarray(volume.dataobj)
            array = array.reshape(array.shape[:2]) if array.ndim == 3 and array.shape[2] == 1 else array
            array = array.T if array.ndim == 2 else array
        elif name.endswith(".mhd"):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = reader.GetSize()
            _check_pixel_count(path, size[0], size[1])
            array = sitk.GetArrayFromImage(reader.Execute())
            array = array.reshape(array.shape[1:]) if array.ndim == 3 and array.shape[0] == 1 else array
        else:
            raise MedbenchError(f"File {path} is neither NIfTI (.nii, .nii.gz) nor MetaImage (.mhd).")
    except MedbenchError:
        raise
    except Exception as error:  # nibabel and SimpleITK raise many types (EOFError, RuntimeError, ...)
        raise MedbenchError(
            f"Cannot read image {path}: {type(error).__name__}: {error}. Replace the file with a valid "
            "one (for .mhd, its .raw data file too) or remove the sample."
        ) from error
    if array.ndim != 2:
        raise MedbenchError(
            f"Image {path} has shape {array.shape}; expected one 2D frame. Extract the frame or remove the file."
        )
    return np.asarray(array)
