"""The demo service behind `kyara serve`: a web page and a REST API over the Python API.

One model is loaded at start and shared by every request. Image work runs in worker threads, at
most `Limits.concurrency` at once, so the event loop stays free to answer. Enroll and forget run
one at a time and then swap in the changed model, so the next request sees the change. Request
bodies are counted as they arrive: a streamed body or a false Content-Length cannot get past the
size limit.
"""

from __future__ import annotations

import ctypes
import functools
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote_to_bytes

import anyio
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kyara import __version__
from kyara.detection import DEFAULT_DETECTOR, DetectedFace
from kyara.errors import ImageError, ImageTooLargeError, KyaraError, ModelError, NoFaceError, StorageError
from kyara.explanation import explain
from kyara.gallery import characters_of, clean_name, enroll, forget
from kyara.imageio import DECODED_FORMATS, check_image
from kyara.pipeline import CROP_MARGIN, Recognizer, detection_report, face_crop

T = TypeVar("T")
log = logging.getLogger("kyara.server")

Image.init()  # fills Image.MIME from the format plugins
IMAGE_TYPES = frozenset({Image.MIME[name] for name in DECODED_FORMATS} | {"image/jpg", "image/x-ms-bmp"})
"""Declared types of the formats kyara decodes; any other declared type is answered with 415."""
UNTYPED = frozenset({"", "application/octet-stream"})
"""No useful declared type: the bytes decide (400 if they are no image)."""
ERROR_STATUS: dict[type[KyaraError], int] = {
    StorageError: 507,
    ImageTooLargeError: 413,
    ImageError: 400,
    ModelError: 500,
    KyaraError: 422,
}
"""The first matching class gives the status of a KyaraError (subclasses first)."""
MAX_ENROLL_FILES = 20
ENROLL_CROP_SIDE = 256
"""Side of a face cut by its box for enrollment: well under `kyara.crop.MAX_CROP_SIDE`, so enroll
takes it as a face crop as it is, and above the model's input size, so nothing is lost."""
SERVER_EMBED_BATCH = 4
"""Faces embedded at once by the server: ONNX Runtime keeps the memory of the largest batch each
concurrent run has needed (several MB a face); 4 at a time runs as fast as 32 on 2 cores."""
MMAP_THRESHOLD = 1024 * 1024
"""Allocations from this size on get their own memory map, given back to the system when freed."""
TRIM_EVERY_S = 1.0
"""After a worker's job, free heap memory is given back to the system at most this often."""
WEB = Path(str(resources.files("kyara") / "web"))
DOCS_ASSETS = Path(str(resources.files("swagger_ui") / "static"))
"""Swagger UI's files, from the swagger-ui-py package: /docs works offline too."""


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 1024 * 1024
    """Largest request body; a bigger one gets 413 without being read to its end."""
    max_pixels: int = 20_000_000
    """Largest image decoded (width x height, about 5000 x 4000); a bigger one gets 413."""
    concurrency: int = 2
    """Images processed at once; further requests wait for a free worker."""
    max_waiting: int = 256
    """Requests waiting for a worker (their bodies read, nothing decoded yet); one more gets 503
    with Retry-After."""
    max_queued_bytes: int = 128 * 1024 * 1024
    """Request bodies held at once, all requests together: a body that would pass it gets 503
    with Retry-After (unless it is the only one held). With `max_waiting`, this bounds what a
    burst can make the server hold before decoding, whatever the size of each body."""
    max_explained_faces: int = 8
    """Faces given a heat map per /api/explain request (the most face-like first): about 0.4 s each."""

    @property
    def max_connections(self) -> int:
        """Connections `kyara serve` keeps open at once. Uvicorn would answer plain text beyond
        this, without reading the body (the client sees its connection reset), so it is far above
        what kyara admits: kyara refuses the excess itself, in JSON, after reading each refused
        body away without keeping it. An open connection costs a few kilobytes."""
        return max(4096, 4 * (self.concurrency + self.max_waiting))


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass(frozen=True)
class FaceBox:
    x: int
    y: int
    w: int
    h: int
    angle: float = 0.0


class ErrorBody(BaseModel):
    error: str
    status: int


class Service:
    """The model every request shares. Reads use whichever model is current when they start;
    enroll and forget are serialized and replace it once the bundle on disk has changed."""

    def __init__(
        self,
        model: str | os.PathLike | None,
        limits: Limits,
        detector: str = DEFAULT_DETECTOR,
        token: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.model = model
        self.limits = limits
        self.token = token.encode("utf-8") if token else None
        self.read_only = read_only
        self.recognizer = self._recognizer(detector)
        self.workers = anyio.CapacityLimiter(limits.concurrency)
        self.writing = threading.Lock()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a worker thread, once one of the `concurrency` workers is free."""
        busy = self.workers.statistics()
        if busy.borrowed_tokens >= busy.total_tokens and busy.tasks_waiting >= self.limits.max_waiting:
            raise HTTPException(503, "busy: too many pictures waiting, retry shortly", headers={"Retry-After": "1"})
        return await anyio.to_thread.run_sync(functools.partial(self._job, work, *args), limiter=self.workers)

    def _job(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return work(*args)
        finally:
            give_back_memory()

    def recognize(self, upload: Upload, top_k: int) -> dict:
        recognizer = self.recognizer
        report = recognizer.recognition_report(upload.data, top_k)
        return {"path": upload.name, **report, "model": recognizer.bundle.describe()}

    def explain(self, upload: Upload, label: str | None, versus: str | None) -> dict:
        recognizer = self.recognizer
        picture = recognizer.load(upload.data)
        explained = explain(picture, recognizer, label, versus, self.limits.max_explained_faces)
        faces = [explanation.to_dict() for explanation in explained]
        size = {"width": picture.width, "height": picture.height}
        return {"path": upload.name, **size, "faces": faces, "model": recognizer.bundle.describe()}

    def detect(self, upload: Upload) -> dict:
        recognizer = self.recognizer
        report = detection_report(upload.data, recognizer.detector, recognizer.max_pixels)
        return {"path": upload.name, **report, "detector": recognizer.detector.name}

    def enroll(self, name: str, uploads: list[Upload], box: FaceBox | None) -> dict:
        for upload in uploads:  # a bad file is refused before any work; nothing is decoded yet
            check_image(upload.data, self.limits.max_pixels)
        # One picture decoded at a time: twenty 20-megapixel pictures would take over a gigabyte.
        pictures = [upload.data for upload in uploads]
        if box is not None:
            pictures = [face_at(self.recognizer.load(uploads[0].data), box)]
        with self.writing:
            try:
                # The server's own recognizer: its detector finds the faces, no new ONNX sessions.
                result = enroll(name, pictures, self.recognizer, self.limits.max_pixels)
            except NoFaceError:
                names = ", ".join(upload.name for upload in uploads)
                raise HTTPException(422, f"no face found in {names}: send a face crop or the face's box") from None
            self._reload()
        return {"name": result.name, "added": result.added, "skipped": len(result.skipped)}

    def check_write(self, request: Request) -> None:
        """Refuse a change to the model unless this server takes writes and the request carries
        its token (`Authorization: Bearer <token>`). `Admission` asks the same before reading
        the body; this is the handlers' own check."""
        refusal = self.write_refusal(request.headers.get("authorization", ""))
        if refusal is not None:
            raise refusal

    def write_refusal(self, authorization: str) -> HTTPException | None:
        if self.read_only:
            return HTTPException(403, "this server is read-only (kyara serve --read-only): it cannot change characters")
        if self.token is None:
            return None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8"), self.token):
            return None
        return HTTPException(
            401,
            "changing characters needs this server's token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def scope_refusal(self, scope: Scope) -> JSONResponse | None:
        """The answer to a request that would change the model and may not, else None."""
        if not scope["path"].startswith("/api/characters/") or scope["method"] in ("GET", "HEAD"):
            return None
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        refusal = self.write_refusal(authorization)
        return None if refusal is None else error(refusal.status_code, str(refusal.detail), refusal.headers)

    def writes(self) -> str:
        return "read-only" if self.read_only else "token" if self.token else "open"

    def forget(self, name: str) -> dict:
        with self.writing:
            # A trained name is a folder's name as it was (maybe spaced or decomposed): it is
            # found by its cleaned form, the form every name in a request is cleaned to.
            labels = self.recognizer.bundle.all_labels()
            found = [label for label in labels if label == name] or [
                label for label in labels if cleaned_or_none(label) == name
            ]
            if not found:
                raise HTTPException(404, f"no character named {name!r}")
            name = found[0]
            removed = forget(name, self.model)
            self._reload()
        return {"name": name, "removed": removed}

    def characters(self) -> list[dict]:
        return characters_of(self.recognizer.bundle)  # the model requests are answered with

    def health(self) -> dict:
        bundle = self.recognizer.bundle
        return {
            "status": "ok",
            "kyara_version": __version__,
            "model": bundle.describe(),
            "characters": bundle.all_labels(),
            "limits": asdict(self.limits),
            "writes": self.writes(),
        }

    def _reload(self) -> None:
        self.recognizer = self._recognizer(self.recognizer.detector)

    def _recognizer(self, detector: Any) -> Recognizer:
        recognizer = Recognizer(self.model, detector, max_pixels=self.limits.max_pixels)
        recognizer.embedder.batch_size = SERVER_EMBED_BATCH
        return recognizer


_libc: Any = None
_trimmed = 0.0
_trimming = threading.Lock()


def give_back_memory() -> None:
    """`malloc_trim`: free memory in the heaps of glibc goes back to the system (at most every
    TRIM_EVERY_S seconds: it takes a few milliseconds)."""
    global _trimmed
    if _libc is None or not _trimming.acquire(blocking=False):
        return
    try:
        if time.monotonic() - _trimmed >= TRIM_EVERY_S:
            _libc.malloc_trim(0)
            _trimmed = time.monotonic()
    finally:
        _trimming.release()


def keep_memory_flat() -> None:
    """Make glibc give large freed blocks back to the system at once. By default it raises its
    memory-map threshold after the first large block is freed (up to 32 MB), so decoded pictures
    then come from the heaps of the worker threads, which seldom shrink: under a stream of
    varied pictures the server grew to over 1 GB. A no-op where the C library is not glibc."""
    global _libc
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc, not another C library)
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    _libc = libc


def cleaned_or_none(name: str) -> str | None:
    try:
        return clean_name(name)
    except KyaraError:
        return None


CHARACTERS_PATH = b"/api/characters/"


def character_name(request: Request, suffix: bytes = b"") -> str:
    """The character a request's address names, cleaned as enroll cleans names (`clean_name`):
    one function for enroll and forget, so what was enrolled can be removed by the same address.
    It is decoded from the raw address: bytes that are not UTF-8 are refused (400) rather than
    read as U+FFFD, which would make different names one."""
    raw = request.scope.get("raw_path")
    if raw is None:  # a server that gives no raw path: the decoded one
        return clean_name(request.path_params["name"])
    raw = raw.split(b"?", 1)[0]
    segment = raw[raw.find(CHARACTERS_PATH) + len(CHARACTERS_PATH) :]
    if suffix and segment.endswith(suffix):
        segment = segment[: -len(suffix)]
    try:
        name = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the character name in the address is not valid UTF-8") from None
    return clean_name(name)


def face_at(picture: Image.Image, box: FaceBox) -> Image.Image:
    """The face at `box`, cut upright as recognition cuts faces, at most ENROLL_CROP_SIDE across.
    The picture is shrunk first, so a huge box cannot make a huge crop."""
    if box.x >= picture.width or box.y >= picture.height or box.x + box.w <= 0 or box.y + box.h <= 0:
        raise HTTPException(422, f"the box {[box.x, box.y, box.w, box.h]} lies outside the {picture.size} image")
    scale = min(1.0, ENROLL_CROP_SIDE / (CROP_MARGIN * max(box.w, box.h)))
    if scale < 1.0:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    scaled = tuple(round(value * scale) for value in (box.x, box.y, box.w, box.h))
    return face_crop(picture, DetectedFace((*scaled[:2], max(1, scaled[2]), max(1, scaled[3])), 1.0, box.angle))


DRAIN_LIMIT = 64 * 1024 * 1024
"""A refused body is read away (and dropped) up to this size before the answer, so that the
client, still sending, reads the answer rather than a reset connection. Past it, the
connection is closed."""


class Admission:
    """Reads each request's body before the app sees it, within `Limits`, and refuses the rest
    in JSON, after reading the refused body away unkept:

    - 413 for a body over `max_body_bytes`: counted as it arrives, not taken from Content-Length
      (a declared larger one is refused without keeping any of it);
    - 503 with Retry-After when `concurrency + max_waiting` requests are already admitted, or
      when the bodies held would pass `max_queued_bytes`;
    - the answer of `guard(scope)` when it gives one (a change without the token: 401).

    Requests without a body to read (GET, HEAD) pass at once. A client that goes away in the
    middle of its body is logged in one line."""

    def __init__(
        self, app: ASGIApp, limits: Limits, guard: Callable[[Scope], JSONResponse | None] = lambda _: None
    ) -> None:
        self.app = app
        self.limits = limits
        self.guard = guard
        self.admitted = 0
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        limits = self.limits
        too_large = error(413, f"the request body is larger than the limit of {limits.max_body_bytes:,} bytes")
        busy = error(503, "busy: too many requests waiting, retry shortly", {"Retry-After": "1"})
        declared = dict(scope["headers"]).get(b"content-length", b"")
        length = int(declared) if declared.isdigit() else None
        if length is not None and length > DRAIN_LIMIT:  # not worth reading: the connection will be closed
            await (self.guard(scope) or too_large)(scope, receive, send)
            return
        refusal = self.guard(scope)
        if refusal is None and length is not None and length > limits.max_body_bytes:
            refusal = too_large
        elif refusal is None and self.admitted >= limits.concurrency + limits.max_waiting:
            refusal = busy
        admitted = refusal is None
        self.admitted += admitted
        chunks: list[bytes] = []
        kept = dropped = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    path = scope.get("raw_path") or scope["path"].encode()
                    log.info(
                        "%s %s: the client went away after %d bytes of its body",
                        scope["method"],
                        path.decode("ascii", "backslashreplace"),
                        kept + dropped,
                    )
                    return
                body = message.get("body", b"")
                if refusal is None and kept + len(body) > limits.max_body_bytes:
                    refusal = too_large
                elif refusal is None and self.held > kept and self.held + len(body) > limits.max_queued_bytes:
                    refusal = busy  # only when others hold bodies too: a body alone is always taken
                if refusal is None:
                    chunks.append(body)
                    kept += len(body)
                    self.held += len(body)
                else:
                    self.held -= kept
                    dropped += kept + len(body)
                    chunks.clear()
                    kept = 0
                if not message.get("more_body", False) or dropped > DRAIN_LIMIT:
                    break
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            whole = [b"".join(chunks)]
            chunks.clear()

            async def replay() -> Message:
                if whole:
                    return {"type": "http.request", "body": whole.pop(), "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.admitted -= admitted
            self.held -= kept


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status, headers)


def kyara_error(_: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
    return error(status, str(exc))


def http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), exc.headers)


def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
    return error(422, "; ".join(problems))


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_type(content_type: str | None, name: str) -> None:
    declared = media_type(content_type)
    if declared not in IMAGE_TYPES | UNTYPED:
        raise HTTPException(415, f"{name}: unsupported type {declared!r}; send PNG, JPEG, WebP, GIF, BMP or TIFF")


async def read_uploads(request: Request, max_files: int = 1) -> list[Upload]:
    """The images of a request: multipart fields named `file`, or else the raw body."""
    content_type = request.headers.get("content-type")
    if media_type(content_type) != "multipart/form-data":
        check_type(content_type, "the request body")
        return [Upload("<body>", await request.body())]
    async with request.form(max_files=max_files, max_fields=max_files) as form:
        files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
        if not files:
            raise HTTPException(422, "no image: send it as a multipart file field named 'file'")
        for item in files:
            check_type(item.content_type, item.filename or "file")
        return [Upload(item.filename or "<file>", await item.read()) for item in files]


IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in sorted(IMAGE_TYPES)},
    },
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Not a readable image"},
    413: {"model": ErrorBody, "description": "Body too large or image with too many pixels"},
    415: {"model": ErrorBody, "description": "Not an image type kyara reads"},
    422: {"model": ErrorBody, "description": "Bad parameters"},
    503: {"model": ErrorBody, "description": "Too many pictures waiting for a worker; retry after Retry-After"},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "The server has a token and the request did not carry it"},
    403: {"model": ErrorBody, "description": "The server is read-only"},
    507: {"model": ErrorBody, "description": "No room on the disk to write the model; it was not changed"},
}
TopK = Annotated[int, Query(ge=1, le=100, description="How many guesses to list per face.")]
Character = Annotated[str | None, Query(min_length=1, max_length=200)]
Coordinate = Annotated[int | None, Query(ge=-(10**6), le=10**6)]
Side = Annotated[int | None, Query(ge=1, le=10**6)]


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (an address or a name to listen on)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that resolves elsewhere, or every interface


def check_exposure(host: str, token: str | None, read_only: bool, allow_anonymous_writes: bool) -> None:
    """Refuse to serve writes to strangers: listening beyond loopback needs a token, or
    read-only, or the explicit `allow_anonymous_writes`."""
    if token or read_only or allow_anonymous_writes or is_loopback(host):
        return
    raise KyaraError(
        f"listening on {host} would let anyone who reaches it enroll and remove characters: give a token "
        "(--token or KYARA_TOKEN), or --read-only, or --allow-anonymous-writes if the network is yours"
    )


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """How `kyara serve` runs uvicorn for these limits: kyara, not uvicorn, refuses the excess
    of a burst (see `Limits.max_connections`), and the kernel queues the connections of a burst
    until uvicorn accepts them (`backlog`)."""
    return {"limit_concurrency": limits.max_connections, "backlog": 4096}


def create_app(
    model: str | os.PathLike | None = None,
    limits: Limits | None = None,
    detector: str = DEFAULT_DETECTOR,
    *,
    token: str | None = None,
    read_only: bool = False,
    allow_anonymous_writes: bool = False,
    host: str = "127.0.0.1",
) -> FastAPI:
    """The web page and the REST API over `model` (default: the user's copy or the built-in one),
    finding faces with `detector` (a `kyara.detection.DETECTORS` name).

    With `token`, enroll and forget need `Authorization: Bearer <token>` (401 otherwise); with
    `read_only` they answer 403. Serving on a `host` that is not loopback without either raises
    `KyaraError` unless `allow_anonymous_writes`."""
    check_exposure(host, token, read_only, allow_anonymous_writes)
    keep_memory_flat()
    limits = limits or Limits()
    service = Service(model, limits, detector, token, read_only)
    app = FastAPI(
        title="kyara",
        version=__version__,
        description="Which anime character is in this picture? Upload an image; get every face, named.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(Admission, limits=limits, guard=service.scope_refusal)
    app.add_exception_handler(KyaraError, kyara_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.post("/api/recognize", responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY})
    async def recognize_image(request: Request, top_k: TopK = 5) -> dict:
        """Every face with its character (null when unknown), confidence and top-k guesses: the
        JSON of `kyara recognize --json` for one image, with the model's description."""
        upload = (await read_uploads(request))[0]
        return await service.run(service.recognize, upload, top_k)

    @app.post("/api/explain", responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY})
    async def explain_image(request: Request, label: Character = None, versus: Character = None) -> dict:
        """A heat map over every face: what its score for `label` (default: its best guess) rests
        on, or with `versus`, why `label` and not `versus` (as `kyara explain --json`, less the
        picture it writes). Each map is 32 x 32, rows first, drawn over the face's `crop_box`
        turned `angle` degrees clockwise about its centre; positive values speak for `label`.
        About half a second per face; at most the 8 most face-like faces (`Limits`)."""
        upload = (await read_uploads(request))[0]
        return await service.run(service.explain, upload, label, versus)

    @app.post("/api/detect", responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY})
    async def detect_faces(request: Request) -> dict:
        """Faces only: boxes, scores and tilt (as `kyara detect --json`; landmarks and hair/eye
        colours come only from the animeface detector)."""
        upload = (await read_uploads(request))[0]
        return await service.run(service.detect, upload)

    @app.get("/api/characters")
    async def list_characters() -> list[dict]:
        """Every character the model knows, trained or enrolled, with image counts."""
        return await service.run(service.characters)

    @app.post(
        "/api/characters/{name:path}/images",
        responses=ERRORS | WRITE_ERRORS,
        openapi_extra={"requestBody": IMAGE_BODY},
        status_code=201,
    )
    async def enroll_images(
        name: str,
        request: Request,
        x: Coordinate = None,
        y: Coordinate = None,
        w: Side = None,
        h: Side = None,
        angle: Annotated[float, Query(ge=-180, le=180)] = 0.0,
    ) -> dict:
        """Teach the model `name` from pictures: face crops, whole pictures (their most face-like
        face is used), or one picture with the face's box (`x, y, w, h` and `angle` as returned
        by recognize). Needs the server's token when it has one."""
        service.check_write(request)
        name = character_name(request, b"/images")
        given = [value is not None for value in (x, y, w, h)]
        if any(given) and not all(given):
            raise HTTPException(422, "give all of x, y, w and h for a face box, or none")
        box = FaceBox(x, y, w, h, angle) if all(given) else None
        uploads = await read_uploads(request, 1 if box else MAX_ENROLL_FILES)
        return await service.run(service.enroll, name, uploads, box)

    @app.delete("/api/characters/{name:path}", responses=WRITE_ERRORS | {404: {"model": ErrorBody}})
    async def forget_character(name: str, request: Request) -> dict:
        """Remove a character, enrolled or trained. Needs the server's token when it has one."""
        service.check_write(request)
        return await service.run(service.forget, character_name(request))

    @app.get("/api/health")
    async def health() -> dict:
        """The model's name, version and characters, and the limits in force."""
        return service.health()

    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="kyara API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # the default badge calls an online validator
        )

    app.mount("/", StaticFiles(directory=WEB, html=True), name="page")
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None, **app_options: Any) -> None:
    """`kyara serve`: `create_app(limits=limits, host=host, **app_options)` (model, detector, token,
    read_only, allow_anonymous_writes) on uvicorn at `host`:`port`, until interrupted."""
    limits = limits or Limits()
    application = create_app(limits=limits, host=host, **app_options)
    uvicorn.run(application, host=host, port=port, **uvicorn_options(limits))
