"""Decoding only a box of a JPEG, as MindSpore's RandomCropDecodeResize does, with libjpeg-turbo's
jpeg_crop_scanline and jpeg_skip_scanlines (csrc/jpeg_crop.cc): the IDCT and colour conversion outside
the box are skipped and decoding stops after its last row. No maintained wheel offers this (simplejpeg
and Pillow decode whole files), so the source is built against the system's libjpeg-turbo on first use
(build.py); without its headers (Debian/Ubuntu: apt-get install libjpeg-dev) library() says why once
and data/decoding.py decodes whole files, to the same pixels. The box's pixels equal those of a whole decode
(tests/test_data.py), at full size and at 1/2, 1/4 and 1/8 scale.
"""
import ctypes
import logging
from typing import Optional

import numpy as np

from . import build

SOURCE = build.CSRC / "jpeg_crop.cc"
LIBRARY_NAME = "libmobilenetv3_jpeg_crop.so"
FLAGS = ["-Wall", "-O2", "-std=c++17", "-shared", "-fPIC", "-Wl,--no-undefined"]
LIBRARIES = ["-ljpeg"]
MESSAGE_SIZE = 200  # libjpeg's JMSG_LENGTH_MAX

logger = logging.getLogger(__name__)
_state = {}  # "library": the loaded library or None once decided in this process


def library(say_why: bool = True) -> Optional[ctypes.CDLL]:
    """The loaded library, or None if it cannot be built or loaded here; decided once per process, which
    then logs why not (with `say_why`)."""
    if "library" in _state:
        return _state["library"]
    _state["library"] = None
    try:
        handle = build.load(SOURCE, FLAGS, LIBRARY_NAME, LIBRARIES)
        handle.DecodeJpegCrop.restype = ctypes.c_int
        handle.DecodeJpegCrop.argtypes = [ctypes.c_char_p, ctypes.c_ulong] + [ctypes.c_int] * 5 + [
            ctypes.c_void_p, ctypes.c_char_p]
        _state["library"] = handle
    except (build.Unavailable, AttributeError) as why:  # AttributeError: a library without DecodeJpegCrop
        if say_why:
            logger.warning(f"decoding whole JPEGs, not only the crop (the same pixels, slower): {why}; "
                           "for libjpeg-turbo's headers: apt-get install libjpeg-dev")
    return _state["library"]


def decode(blob: bytes, scale: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    """RGB uint8 HWC pixels of the box (in the coordinates of the image decoded at 1/scale) of the JPEG
    `blob`; raises ValueError for a corrupt or truncated file, or a box outside the image. library()
    must have returned the library."""
    out = np.empty((height, width, 3), np.uint8)
    message = ctypes.create_string_buffer(MESSAGE_SIZE)
    if _state["library"].DecodeJpegCrop(blob, len(blob), scale, top, left, height, width,
                                        out.ctypes.data, message) != 0:
        raise ValueError(message.value.decode(errors="replace"))
    return out
