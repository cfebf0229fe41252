"""A loaded model as the service runs it: an upload's bytes to its eval view (eval_view, in the decoding
threads), a batch of eval views to class probabilities (probabilities, in the batcher's thread), a row of
probabilities to the top-k records a response carries, and what /metadata says of the model."""
from dataclasses import dataclass
from typing import Callable, List

import numpy as np
from PIL import Image

from .. import __version__
from ..data.decoding import READ_ERRORS, EncodedImage
from ..data.preprocessing import Preprocessing
from ..data.transforms import eval_image
from ..deploy.inference import class_probabilities, top_classes

# Uploads with more pixels are refused before decoding: a small file (a PNG of one colour, a JPEG header
# claiming 65535 x 65535) can otherwise make the service allocate gigabytes. Phone photos stay well below.
MAX_PIXELS = 50_000_000


class ImageRefused(Exception):
    """An upload the service does not decode; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def power_of_two_pieces(count: int) -> List[int]:
    """`count` as a sum of distinct powers of two, largest first: 13 -> [8, 4, 1]."""
    return [1 << bit for bit in reversed(range(count.bit_length())) if count >> bit & 1]


@dataclass
class ServedModel:
    predict: Callable  # a batch of float32 NCHW images -> logits (deploy.inference.load_model)
    preprocessing: Preprocessing
    class_names: List[str]
    name: str
    backend: str
    max_pixels: int = MAX_PIXELS

    def eval_view(self, blob: bytes) -> np.ndarray:
        """The eval view (uint8 HWC) of the image file `blob`; ImageRefused for anything else."""
        try:
            image = EncodedImage(blob)
            if image.width * image.height > self.max_pixels:
                raise ImageRefused(f"the image is {image.width} x {image.height} pixels, more than the "
                                   f"{self.max_pixels:,} this service decodes; send a smaller image", 413)
            return eval_image(image, self.preprocessing)
        except Image.DecompressionBombError as err:  # Pillow's own limit, should ours ever be above it
            raise ImageRefused(f"the image has too many pixels to decode ({err})", 413) from None
        except Image.UnidentifiedImageError:
            raise ImageRefused("the body is not an image file this service can read (JPEG, PNG, WebP, BMP, TIFF, "
                               "GIF, ...)") from None
        except READ_ERRORS as err:
            raise ImageRefused(f"the image cannot be decoded: it is truncated or corrupt ({type(err).__name__}: "
                               f"{err})") from None

    def probabilities(self, views: List[np.ndarray]) -> List[np.ndarray]:
        """The class probabilities of each eval view. The batch runs in power-of-two pieces: a MindSpore
        graph compiles for each new input shape (seconds), so warm_up can compile every shape beforehand."""
        rows, start = [], 0
        for size in power_of_two_pieces(len(views)):
            rows.extend(class_probabilities(self.predict, np.stack(views[start:start + size]), self.preprocessing,
                                            len(self.class_names)))
            start += size
        return rows

    def warm_up(self, max_batch: int):
        """Run every batch shape `probabilities` can use up to max_batch once, so none compiles during a request."""
        size = self.preprocessing.resize
        for pieces in range(max_batch.bit_length()):
            self.probabilities([np.zeros((size, size, 3), np.uint8)] * (1 << pieces))

    def top_k(self, probabilities: np.ndarray, k: int) -> List[dict]:
        return [{"label": self.class_names[i], "index": int(i), "probability": float(probabilities[i])}
                for i in top_classes(probabilities, k)]

    def metadata(self) -> dict:
        return {"model": self.name, "backend": self.backend, "num_classes": len(self.class_names),
                "classes": self.class_names, "preprocessing": self.preprocessing.as_meta(), "version": __version__}
