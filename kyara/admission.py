"""What the server lets in: its limits, request bodies read within them, the types, names and
writers it accepts, and the JSON answer of everything it refuses.

`Admission` sits in front of the app: a body is counted as it arrives, so a streamed body or a
false Content-Length cannot pass the size limit, and a burst beyond the queue's bound is refused
(503, Retry-After) instead of resetting connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kyara.errors import ImageError, ImageTooLargeError, KyaraError, ModelError, StorageError
from kyara.gallery import clean_name
from kyara.imageio import DECODED_FORMATS

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
    body_idle_seconds: float = 15.0
    """A request body that stops arriving for this long is answered 408 and its connection
    given up: a client that sends part of its body and waits would otherwise hold its place in
    the queue for good, and a few hundred of them would lock every other client out."""
    body_seconds: float = 120.0
    """...and one that has not arrived whole this long after it began (20 MB at 170 kB/s)."""
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


def cleaned_or_none(name: str) -> str | None:
    try:
        return clean_name(name)
    except KyaraError:
        return None


CHARACTERS_PATH = b"/api/characters/"


class NameConvertor(PathConvertor):
    """`{name:name}` in a route: like `path`, and across line breaks too, so that a name holding
    one reaches `character_name` and is refused as a name (422), not as an address (404)."""

    regex = r"[\s\S]*"


register_url_convertor("name", NameConvertor())


def character_name(request: Request, suffix: bytes = b"") -> str:
    """The character a request's address names, cleaned as enroll cleans names (`clean_name`):
    one function for enroll and forget, so what was enrolled can be removed by the same address.
    It is decoded from the raw address, one segment (`/api/characters/NAME` then `suffix`, a '/'
    in a name written %2F): bytes that are not UTF-8 are refused (400) rather than read as U+FFFD,
    which would make different names one, and so is an address whose other segments are spelled
    in escapes (the route sees them decoded, and would take part of them for the name)."""
    raw = request.scope.get("raw_path")
    if raw is None:  # a server that gives no raw path: the decoded one
        return clean_name(request.path_params["name"])
    segments = raw.split(b"?", 1)[0].split(b"/")
    expected = CHARACTERS_PATH.split(b"/")[:-1] + suffix.split(b"/")[1:]
    if len(segments) != len(expected) + 1 or segments[:3] + segments[4:] != expected:
        raise HTTPException(400, "write the address as /api/characters/NAME, with only the name's characters escaped")
    try:
        name = unquote_to_bytes(segments[3]).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the character name in the address is not valid UTF-8") from None
    return clean_name(name)


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
    middle of its body is logged in one line; one whose body stalls gets 408 (`body_idle_seconds`,
    `body_seconds`)."""

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
        clock = asyncio.get_running_loop().time
        deadline = clock() + limits.body_seconds
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), min(limits.body_idle_seconds, deadline - clock()))
                except TimeoutError:
                    await error(408, "the request body stopped arriving; send it whole")(scope, receive, send)
                    return
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
