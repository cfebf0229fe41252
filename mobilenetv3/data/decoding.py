"""Image files decoded to RGB uint8 pixels, in Python rather than with MindSpore's Decode: MindSpore 2.10's
JPEG decoder kills the process (SIGFPE/SIGSEGV) on truncated or corrupt files, which no error-samples mode
can catch. These raise instead, so a bad file is skipped with a warning naming it. JPEGs go to
libjpeg-turbo (simplejpeg; a crop alone through native/jpeg_crop.py), everything else to Pillow, which
also reads every mode (CMYK, palette, RGBA, 16-bit, WebP) into 3-channel RGB."""
import io
from typing import Tuple

import numpy as np
import simplejpeg
from PIL import Image

from ..native import jpeg_crop

# What reading and decoding a file raise when the file is bad (not errors of the transforms after them).
READ_ERRORS = (OSError, ValueError, RuntimeError, Image.DecompressionBombError)


def rgb(image: Image.Image) -> Image.Image:
    """An opened image, loaded and converted to RGB; raises OSError/ValueError on bad files."""
    image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale: keep the top 8 bits
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def reduction(shrink: float) -> int:
    """The DCT scaling (1, 2, 4 or 8) a JPEG may decode at when its pixels will be shrunk `shrink` times."""
    return next((s for s in (8, 4, 2) if s <= shrink), 1)


class EncodedImage:
    """An image file's bytes, its size (read from its header alone), and its pixels decoded to RGB.

    JPEGs in YCbCr or grayscale (nearly every photo) decode with libjpeg-turbo through simplejpeg, which
    writes straight into a numpy array without holding the GIL, faster than Pillow and to the same pixels
    (both are libjpeg-turbo with the same settings; tests/test_data.py compares them). Every other file,
    and any JPEG simplejpeg refuses, goes to Pillow, which reads some files libjpeg-turbo's strict mode
    refuses and names the fault of those it cannot read either.
    """

    def __init__(self, source):
        """`source`: the file's path, or its bytes (an upload)."""
        if isinstance(source, bytes):
            self.blob = source
        else:
            with open(source, "rb") as file:
                self.blob = file.read()
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(self.blob)
            self.turbo = colorspace in ("YCbCr", "Gray")  # Pillow's CMYK conversion is its own
        except ValueError:
            self.turbo = False
            with Image.open(io.BytesIO(self.blob)) as image:
                width, height = image.size
        self.width, self.height = width, height

    def rgb_box(self, top: int, left: int, height: int, width: int, shrink: float = 1.0) -> np.ndarray:
        """rgb(shrink) cut to the box (full-size coordinates, scaled as the image is). A JPEG that simplejpeg
        would decode has only the box decoded (jpeg_crop), when that library is available."""
        if self.turbo and jpeg_crop.library() is not None:
            scale = reduction(shrink)
            top_row, end_row, left_column, end_column = self._box_in(
                (-(-self.height // scale), -(-self.width // scale)), top, left, height, width)  # libjpeg's sides
            try:
                return jpeg_crop.decode(self.blob, scale, top_row, left_column, end_row - top_row,
                                        end_column - left_column)
            except ValueError:
                pass  # as rgb(): Pillow reads some files libjpeg-turbo's strict mode refuses, or says why not
        pixels = self.rgb(shrink)
        top_row, end_row, left_column, end_column = self._box_in(pixels.shape[:2], top, left, height, width)
        return np.ascontiguousarray(pixels[top_row:end_row, left_column:end_column])

    def _box_in(self, size, top, left, height, width) -> Tuple[int, int, int, int]:
        """(first row, end row, first column, end column) of the box in this image decoded to `size`."""
        y, x = self.height / size[0], self.width / size[1]
        return round(top / y), round((top + height) / y), round(left / x), round((left + width) / x)

    def rgb(self, shrink: float = 1.0) -> np.ndarray:
        """RGB uint8 HWC pixels; a JPEG whose pixels will be shrunk at least 2, 4 or 8 times afterwards
        decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling; sides rounded up)."""
        scale = reduction(shrink)
        if self.turbo:
            try:
                return simplejpeg.decode_jpeg(self.blob, min_height=-(-self.height // scale),
                                              min_width=-(-self.width // scale))
            except ValueError:
                pass
        with Image.open(io.BytesIO(self.blob)) as image:
            if scale > 1 and image.format == "JPEG":
                image.draft(None, (self.width // scale, self.height // scale))
            return np.asarray(rgb(image))


class PillowImage:
    """A PIL image already in memory with EncodedImage's interface for the eval transform (rgb, width,
    height): its pixels in RGB whatever its mode, decoded already, so nothing to shrink on decoding."""

    def __init__(self, image: Image.Image):
        self.image = image
        self.width, self.height = image.size

    def rgb(self, shrink: float = 1.0) -> np.ndarray:
        return np.asarray(rgb(self.image))
