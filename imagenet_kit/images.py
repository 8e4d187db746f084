"""Image files -> upright 8-bit RGB PIL images, or a reason why not.

Inference-only: Pillow and numpy, nothing from training (no FFCV, numba or torch). The converter, the
export's parity check, the demo and the Hugging Face Space folder (``imagenet-kit space``, which ships a copy
of this file) all open images with ``load_rgb``, so they all see the same pixels.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def load_rgb(path, max_res: int | None = None) -> Image.Image:
    """Open any image Pillow reads as an upright 8-bit RGB image, longest side at most ``max_res``. ``path``: a
    ``Path``, or an archive member with ``read_bytes()``.

    Handles CMYK, grayscale, palette, alpha (composited on white), 16-bit, PNG/WebP under a .JPEG
    name, progressive JPEG, and EXIF orientation. Raises ``UnreadableImage`` with a reason otherwise.
    """
    try:
        if isinstance(path, Path):
            if not path.exists():
                raise UnreadableImage("broken symbolic link or file removed during conversion")
            if path.stat().st_size == 0:
                raise UnreadableImage("empty file (0 bytes)")
            opened = path
        else:  # a member of an archive (data/archives.py): its bytes, read in place
            opened = io.BytesIO(path.read_bytes())
            if not opened.getbuffer().nbytes:
                raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; treat both as the bomb they are.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as image:
                if max_res:
                    image.draft(image.mode, (max_res, max_res))  # JPEG: decode at 1/2, 1/4, 1/8 scale
                image = ImageOps.exif_transpose(image)
                image.load()
                image = _to_rgb(image)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(_too_large(str(err))) from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"not an image file: accepted {ACCEPTED}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, bad markers, broken chunks
        raise UnreadableImage(f"corrupt or truncated image: {err}") from None
    if max_res and max(image.size) > max_res:
        scale = max_res / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # Area averaging, the filter FFCV's writer applies (OpenCV's INTER_AREA): the stored pixels match what
        # ffcv-imagenet's conversion stores, and it is ~1.5x cheaper than Lanczos (bench convert).
        image = image.resize(size, Image.Resampling.BOX)
    return image


ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, TIFF"


def _too_large(pillow_message: str) -> str:
    """Pillow's decompression-bomb message in user words: how many megapixels, and the limit (Pillow's
    MAX_IMAGE_PIXELS; the kit refuses from there, where Pillow would only warn up to twice that)."""
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    size = f"{int(found[1]) / 1e6:,.0f} megapixels" if found else "more pixels than allowed"
    return f"image too large: {size}, the limit is {Image.MAX_IMAGE_PIXELS / 1e6:.0f} (a decompression-bomb guard)"


class UnreadableImage(ValueError):
    """A file that cannot become an RGB image; the message is the reason recorded in the report."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        return Image.fromarray(np.clip(pixels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
