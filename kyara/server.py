"""The demo service behind `kyara serve`: a web page and a REST API over the Python API.

One model is loaded at start and shared by every request. Image work runs in worker threads, at
most `Limits.concurrency` at once, so the event loop stays free to answer. Enroll and forget run
one at a time and then swap in the changed model, so the next request sees the change. What a
request may carry, and how refusals are answered, is decided in `kyara.admission`; the process's
memory under load in `kyara.memory`.
"""

from __future__ import annotations

import copy
import functools
import hmac
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Scope

from kyara import __version__
from kyara.admission import (
    IMAGE_TYPES,
    Admission,
    Limits,
    Upload,
    character_name,
    check_exposure,
    cleaned_or_none,
    error,
    http_error,
    kyara_error,
    read_uploads,
    uvicorn_options,
    validation_error,
)
from kyara.detection import DetectedFace
from kyara.detectors import DEFAULT_DETECTOR
from kyara.errors import KyaraError, NoFaceError
from kyara.explanation import explain
from kyara.gallery import characters_of, enroll, forget
from kyara.imageio import check_image
from kyara.landmarks import Landmarker, with_landmarks
from kyara.memory import give_back_memory, keep_memory_flat
from kyara.pipeline import CROP_MARGIN, Recognizer, detection_report, face_crop

T = TypeVar("T")

MAX_ENROLL_FILES = 20
ENROLL_CROP_SIDE = 256
"""Side of a face cut by its box for enrollment: well under `kyara.crop.MAX_CROP_SIDE`, so enroll
takes it as a face crop as it is, and above the model's input size, so nothing is lost."""
SERVER_EMBED_BATCH = 4
"""Faces embedded at once by the server: ONNX Runtime keeps the memory of the largest batch each
concurrent run has needed (several MB a face); 4 at a time runs as fast as 32 on 2 cores."""
WEB = Path(str(resources.files("kyara") / "web"))
DOCS_ASSETS = Path(str(resources.files("swagger_ui") / "static"))
"""Swagger UI's files, from the swagger-ui-py package: /docs works offline too."""


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
        self._landmarker: Landmarker | None = None
        self._opening = threading.Lock()

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

    def recognize(self, upload: Upload, top_k: int, landmarks: bool = False) -> dict:
        recognizer = self.recognizer
        if landmarks:
            recognizer = copy.copy(recognizer)  # the same loaded networks, another detector
            recognizer.detector = with_landmarks(recognizer.detector, self.landmarker())
        report = recognizer.recognition_report(upload.data, top_k)
        return {"path": upload.name, **report, "model": recognizer.describe()}

    def explain(self, upload: Upload, label: str | None, versus: str | None) -> dict:
        recognizer = self.recognizer
        picture = recognizer.load(upload.data)
        label, versus = (name and (self.label_named(name) or name) for name in (label, versus))
        explained = explain(picture, recognizer, label, versus, self.limits.max_explained_faces)
        faces = [explanation.to_dict() for explanation in explained]
        size = {"width": picture.width, "height": picture.height}
        return {"path": upload.name, **size, "faces": faces, "model": recognizer.describe()}

    def detect(self, upload: Upload, landmarks: bool = False) -> dict:
        recognizer = self.recognizer
        detector = with_landmarks(recognizer.detector, self.landmarker()) if landmarks else recognizer.detector
        report = detection_report(upload.data, detector, recognizer.max_pixels)
        return {"path": upload.name, **report, "detector": recognizer.detector.name}

    def landmarker(self) -> Landmarker:
        """The landmark network, opened by the first request that asks for landmarks."""
        with self._opening:
            if self._landmarker is None:
                self._landmarker = Landmarker()
            return self._landmarker

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

    def label_named(self, name: str) -> str | None:
        """The model's label that `name` asks for: itself, or the label whose cleaned form is
        the cleaned `name` (a trained name is a folder's name as it was, maybe spaced or
        decomposed, and names in requests are cleaned as enroll cleans them)."""
        labels, cleaned = self.recognizer.bundle.all_labels(), cleaned_or_none(name)
        found = [label for label in labels if label == name] or [
            label for label in labels if cleaned is not None and cleaned_or_none(label) == cleaned
        ]
        return found[0] if found else None

    def forget(self, name: str) -> dict:
        with self.writing:
            label = self.label_named(name)
            if label is None:
                raise HTTPException(404, f"no character named {name!r}")
            name = label
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
            "model": self.recognizer.describe(),
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
Landmarks = Annotated[bool, Query(description="Also place each face's landmarks and read its colours.")]


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
    finding faces with `detector` (a `kyara.detectors.DETECTORS` name).

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
    async def recognize_image(request: Request, top_k: TopK = 5, landmarks: Landmarks = False) -> dict:
        """Every face with its character (null when unknown), confidence and top-k guesses: the
        JSON of `kyara recognize --json` for one image, with the model's description; with
        `landmarks`, as `kyara recognize --landmarks`."""
        upload = (await read_uploads(request))[0]
        return await service.run(service.recognize, upload, top_k, landmarks)

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
    async def detect_faces(request: Request, landmarks: Landmarks = False) -> dict:
        """Faces only: boxes, scores and tilt (as `kyara detect --json`); with `landmarks`, each
        face's eyes, nose, mouth and chin and its hair, skin and eye colours too, and its tilt read
        off its eyes where the detector misread it (as `kyara detect --landmarks`)."""
        upload = (await read_uploads(request))[0]
        return await service.run(service.detect, upload, landmarks)

    @app.get("/api/characters")
    async def list_characters() -> list[dict]:
        """Every character the model knows, trained or enrolled, with image counts."""
        return await service.run(service.characters)

    @app.post(
        "/api/characters/{name:name}/images",
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

    @app.delete("/api/characters/{name:name}", responses=WRITE_ERRORS | {404: {"model": ErrorBody}})
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
