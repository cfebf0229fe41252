"""The HTTP service, a Starlette application (server.py runs it on uvicorn).

    GET  /            the web page (page.html: choose or drop an image, see its top 5 as bars)
    POST /predict     an image as the body (image/*, application/octet-stream) or as a multipart form's file;
                      ?top_k=K. Answers the model, backend, preprocessing and the top-k {label, index, probability}
    GET  /health      ready, with the requests in progress and the batch sizes run so far
    GET  /metadata    the model, its classes and preprocessing, the backend, the package's version, the limits
    GET  /openapi.json

A request is refused before it costs much: top_k and the content type first, then (503 with Retry-After)
when max_queue requests are already in progress, then a body over max_bytes as it arrives; images are
decoded in a pool of threads, then wait in the Batcher for the model. Every error is JSON {"error": ...}
with a 4xx status naming what to change (500 for a fault of the service itself).
"""
import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from ..native.cpu_info import available_cpus
from .batching import Batcher
from .model import ImageRefused, ServedModel

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
RAW_TYPES = ("application/octet-stream",)  # and image/*
FORM_TYPE = "multipart/form-data"
RETRY_AFTER_SECONDS = 1
MAX_TOP_K_DIGITS = 9  # longer numbers are refused without converting them


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_wait_ms: float
    max_bytes: int
    max_queue: int
    decode_threads: int  # 0: one per CPU this process may use
    top_k: int  # when the request gives none


class Service:
    """The endpoints and what they share: the model, the decoding threads, the batcher, the requests in progress."""

    def __init__(self, model: ServedModel, limits: Limits):
        self.model, self.limits = model, limits
        self.in_progress = 0  # admitted and not yet answered
        self.preparing = 0  # of those, still being read or decoded: the batcher waits only for these
        self.batcher = self.decoders = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.decoders = ThreadPoolExecutor(self.limits.decode_threads or available_cpus(), thread_name_prefix="decode")
        self.batcher = Batcher(self.model.probabilities, self.limits.max_batch, self.limits.max_wait_ms / 1000,
                               on_the_way=lambda: self.preparing)
        self.batcher.start()
        try:
            yield
        finally:  # the server has answered every request it accepted
            await self.batcher.close()
            self.decoders.shutdown()

    async def predict(self, request: Request):
        """
        summary: The top-k classes of an image
        description: The body is the image file (Content-Type image/* or application/octet-stream), or a
          multipart/form-data form with the image as its file. Query parameter top_k (1 to the number of classes).
        responses:
          200: {description: "{model, backend, preprocessing, predictions: [{label, index, probability}]}"}
          400: {description: not an image, truncated, bad top_k, a form without a file}
          413: {description: body over max_bytes, or too many pixels}
          415: {description: a content type that is not an image}
          503: {description: too many requests in progress; Retry-After says when to try again}
        """
        top_k = self.top_k(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (kind.startswith("image/") or kind in RAW_TYPES or kind == FORM_TYPE):
            raise HTTPException(415, f"Content-Type {kind or '(none)'} is not an image: send the image file as the "
                                "body with Content-Type image/jpeg (image/png, ...) or application/octet-stream, "
                                "or as the file of a multipart/form-data form (curl -F file=@photo.jpg)")
        if self.in_progress >= self.limits.max_queue:
            raise HTTPException(503, f"the service is busy: {self.in_progress} requests in progress (max_queue); "
                                f"try again in {RETRY_AFTER_SECONDS} s", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.in_progress += 1
        self.preparing += 1
        try:
            try:
                view = await self.eval_view(request, kind)
            finally:
                self.preparing -= 1
            probabilities = await self.batcher.submit(view)
        finally:
            self.in_progress -= 1
        return JSONResponse({"model": self.model.name, "backend": self.model.backend,
                             "preprocessing": self.model.preprocessing.as_meta(),
                             "predictions": self.model.top_k(probabilities, top_k)})

    async def eval_view(self, request: Request, kind: str):
        """The image of the request, read and decoded (in the decoding threads) to its eval view."""
        body = await self.read_body(request)
        if kind == FORM_TYPE:
            body = await form_file(request, body)
        if not body:
            raise HTTPException(400, "the request has no image: its body is empty")
        try:
            return await asyncio.get_running_loop().run_in_executor(self.decoders, self.model.eval_view, body)
        except ImageRefused as err:
            raise HTTPException(err.status, str(err)) from None

    def top_k(self, request: Request) -> int:
        classes = len(self.model.class_names)
        given = request.query_params.get("top_k")
        if given is None:
            return min(self.limits.top_k, classes)
        number = given.strip()
        if not (number.isascii() and number.isdigit() and len(number) <= MAX_TOP_K_DIGITS
                and 1 <= int(number) <= classes):
            raise HTTPException(400, f"top_k must be a whole number from 1 to {classes} (the model's classes), "
                                f"got {given[:20]!r}")
        return int(number)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to be over max_bytes."""
        limit = self.limits.max_bytes
        too_large = HTTPException(413, f"the body is over {limit:,} bytes (max_bytes); send a smaller image")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def health(self, request: Request):
        """
        summary: Whether the service is up, its requests in progress and the batch sizes it has run
        """
        return JSONResponse({"status": "ok", "requests_in_progress": self.in_progress,
                             "batch_sizes": {str(size): count for size, count in
                                             sorted(self.batcher.batch_sizes.items())}})

    async def metadata(self, request: Request):
        """
        summary: The model, its classes and preprocessing, the backend, the version and the service's limits
        """
        return JSONResponse(dict(self.model.metadata(), limits=vars(self.limits)))


async def form_file(request: Request, body: bytes) -> bytes:
    """The bytes of the one file of a multipart/form-data body."""
    async def stream():
        yield body
        yield b""
    if "boundary=" not in request.headers["content-type"]:
        raise HTTPException(400, "the multipart/form-data Content-Type has no boundary; let the client build the form "
                            "(curl -F file=@photo.jpg)")
    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16, max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(400, f"the multipart form cannot be read: {err} (send one image file)") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(400, "the multipart form has no file: send the image as a file field "
                                "(curl -F file=@photo.jpg)")
        return await files[0].read()
    finally:
        await form.close()


async def error_response(request: Request, error: HTTPException):
    return JSONResponse({"error": error.detail}, error.status_code, headers=error.headers)


async def internal_error(request: Request, error: Exception):
    logger.error(f"{request.method} {request.url.path} failed: {type(error).__name__}: {error}")
    return JSONResponse({"error": f"the service failed: {type(error).__name__}: {error}"}, 500)


def create_app(model: ServedModel, limits: Limits) -> Starlette:
    service = Service(model, limits)
    page_html = PAGE.read_text(encoding="utf-8")

    async def page(request: Request):
        return HTMLResponse(page_html)

    async def openapi(request: Request):
        return JSONResponse(schemas.get_schema(routes=request.app.routes))
    schemas = SchemaGenerator({"openapi": "3.0.0", "info": {"title": f"{model.name} image classification",
                                                             "version": model.metadata()["version"]}})
    routes = [Route("/", page, include_in_schema=False),
              Route("/predict", service.predict, methods=["POST"]),
              Route("/health", service.health),
              Route("/metadata", service.metadata),
              Route("/openapi.json", openapi, include_in_schema=False)]
    return Starlette(routes=routes, lifespan=service.lifespan,
                     exception_handlers={HTTPException: error_response, Exception: internal_error})
