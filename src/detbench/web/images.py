"""Decoding uploaded images safely, in memory, with a limit on their pixel count.

Pillow reads an image's dimensions from its header without decoding the pixels, so an image
that would decode to more pixels than allowed (a "decompression bomb": a few kB of PNG or JPEG
that expand to gigabytes) is refused before any pixel memory is allocated. OpenCV has no such
header-only call, which is why Pillow does the decoding here.

The decoded image is handed on as a BGR uint8 array, exactly what ``cv2.imread`` gives the
evaluation (:func:`detbench.data.dataset.read_image`): EXIF orientation is applied as OpenCV
does, and both libraries decode baseline JPEG with libjpeg-turbo's defaults (identical pixels
on BCCD; a test checks it), so the app sees the image the evaluation would.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

# Formats a browser or a microscope camera produces; anything else is refused before Pillow
# tries its long list of exotic decoders on untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")


class ImageRejected(ValueError):
    """An upload that is not an image we can process; the message is shown to the user."""


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """An upload decoded for the model: ``pixels`` (BGR uint8, H x W x 3) may be smaller than
    the file's ``width`` x ``height`` (see :func:`decode_upload`)."""

    pixels: np.ndarray
    width: int
    height: int

    @property
    def scale(self) -> float:
        """Decoded pixels per original pixel (1.0 when decoded at full size)."""
        return self.pixels.shape[1] / self.width


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode ``data`` at full size to a BGR uint8 array (H, W, 3); see decode_upload."""
    return decode_upload(data, max_pixels, max_side=None).pixels


def decode_upload(data: bytes, max_pixels: int, max_side: int | None) -> DecodedImage:
    """Decode ``data``; raise :class:`ImageRejected` for empty, non-image, corrupt or truncated
    data and for images over ``max_pixels`` pixels.

    With ``max_side``, an image whose longer side exceeds it is decoded reduced to that side:
    JPEG by libjpeg's DCT scaling (1/2, 1/4, 1/8; a 5000 px JPEG never exists at full size in
    memory), other formats resized right after decoding. A request's memory is then set by
    ``max_side``, not by the upload. Images within ``max_side`` decode exactly as
    ``cv2.imread`` does. Only the first frame of an animated GIF/WebP or multi-page TIFF is used.
    """
    if not data:
        raise ImageRejected("the uploaded file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        # Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) fired while reading the header.
        raise ImageRejected(_too_many_pixels(None, None, max_pixels)) from None
    except Exception:
        # Image.open only parses the header; any failure means "not an image we read".
        raise ImageRejected(
            f"not a supported image (expected one of {', '.join(ALLOWED_FORMATS)})"
        ) from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected(f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageRejected(_too_many_pixels(width, height, max_pixels))
        target = _reduced_size(width, height, max_side)
        try:
            if target is not None and image.format == "JPEG":
                image.draft("RGB", target)  # the smallest DCT scale still >= target
            image.load()  # decodes; truncated data raises (ImageFile.LOAD_TRUNCATED_IMAGES off)
            # Reduce first, while only the decoder's own buffer exists at full size: every
            # later step (rotation, colour conversion, the BGR copy) copies the image.
            fitted = _fit(image, max_side) if target is not None else image
            upright = ImageOps.exif_transpose(fitted)
            rgb = upright.convert("RGB")
        except Exception as error:
            # Decoders report damage in many ways (OSError, SyntaxError, ValueError,
            # struct.error, ...); all of them mean the same thing to the user.
            raise ImageRejected(f"corrupt or truncated {image.format} image ({error})") from None
    # Original size as the user sees it (EXIF rotation may swap the sides).
    if upright.size != fitted.size:
        width, height = height, width
    pixels = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    return DecodedImage(pixels, width, height)


def _reduced_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    if max_side is None or max(width, height) <= max_side:
        return None
    ratio = max_side / max(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _fit(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image`` with its longer side at most ``max_side`` (area averaging, as the letterbox).
    EXIF orientation is kept (the result carries the original's metadata)."""
    target = _reduced_size(*image.size, max_side)
    if target is None:
        return image
    fitted = image.resize(target, Image.Resampling.BOX)
    fitted.info = image.info
    fitted.getexif().update(image.getexif())
    return fitted


def _too_many_pixels(width: int | None, height: int | None, max_pixels: int) -> str:
    size = "" if width is None else f" ({width}x{height} = {width * height:,} pixels)"
    return f"the image is too large{size}: at most {max_pixels:,} pixels are accepted"
