"""Issue 15: a burst is queued or refused in JSON, never reset; what a burst may hold is bounded;
a client that leaves mid-body is one log line. Real uvicorn servers on loopback, in a thread."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import Counter

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra")
import httpx

from kyara.admission import Admission, Limits, uvicorn_options
from kyara.server import create_app
from tests import servers
from tests.conftest import drawing_module
from tests.test_server import PURPLE, png


def serving(app, limits: Limits):
    """`app` served by uvicorn on loopback as `kyara serve` runs it; yields its address."""
    return servers.serving(app, start_seconds=30, log_config=None, **uvicorn_options(limits))


async def burst(url: str, count: int, files: dict, on_answer=None) -> list:
    """`count` requests at once, each on its own connection: (status, JSON or None, headers) or the
    transport error's class name."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one():
            try:
                response = await client.post(f"{url}/api/recognize", files=files)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            if on_answer:
                on_answer(response)
            is_json = response.headers.get("content-type") == "application/json"
            return response.status_code, response.json() if is_json else None, response.headers

        return await asyncio.gather(*(one() for _ in range(count)))


def test_200_requests_at_once_are_all_answered(tmp_path, monkeypatch):
    """Before: 40 at once gave 8 answers and 32 reset connections (uvicorn's own 503)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    crop = png(drawing_module().draw_character(128, *PURPLE).convert("RGB"))
    limits = Limits()
    with serving(create_app(limits=limits), limits) as url:
        outcomes = asyncio.run(burst(url, 200, {"file": ("crop.png", crop, "image/png")}))
    answered = [outcome for outcome in outcomes if not isinstance(outcome, str)]
    assert Counter(outcome[0] for outcome in answered) == {200: 200}, Counter(map(str, outcomes))
    assert all(len(body["faces"]) == 1 for _, body, _ in answered)


class Held:
    """An app that answers 200 once `release` is set: requests it admitted stay in flight."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.bodies: list[int] = []

    async def __call__(self, scope, receive, send) -> None:
        assert scope["type"] in ("http", "lifespan")
        if scope["type"] == "lifespan":
            return
        message = await receive()
        self.bodies.append(len(message["body"]))
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def test_beyond_the_queue_the_excess_gets_json_503_and_no_reset():
    """concurrency + max_waiting = 10 admitted; 30 more refused after their bodies are read away."""
    limits = Limits(concurrency=2, max_waiting=8)
    app = Held()
    picture = bytes(range(256)) * 160  # 40 kB: enough to be reset if refused while it is sent
    refused = []

    def on_answer(response):
        if response.status_code == 503:
            refused.append(response)
            if len(refused) == 30:
                app.release.set()  # every refusal came while the ten were held

    with serving(Admission(app, limits), limits) as url:
        outcomes = asyncio.run(burst(url, 40, {"file": ("a.png", picture, "image/png")}, on_answer))
    statuses = Counter(outcome if isinstance(outcome, str) else outcome[0] for outcome in outcomes)
    assert statuses == {200: 10, 503: 30}
    for status, body, headers in outcomes:
        if status == 503:
            assert body == {"error": "busy: too many requests waiting, retry shortly", "status": 503}
            assert headers["retry-after"] == "1"
    assert len(app.bodies) == 10 and min(app.bodies) > len(picture)  # the whole multipart body


def asgi_burst(app, bodies: list[bytes]) -> list[int]:
    """Requests sent at once to an ASGI app in this process; the statuses in order of sending."""

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kyara") as client:
            tasks = []
            for body in bodies:
                tasks.append(asyncio.create_task(client.post("/api/recognize", content=body)))
                await asyncio.sleep(0.02)  # in this order
            return [response.status_code for response in await asyncio.gather(*tasks)]

    return asyncio.run(run())


def test_queued_bodies_are_bounded_in_bytes():
    """max_queued_bytes bounds what queued requests hold, whatever their number."""
    app = Held()
    admission = Admission(app, Limits(concurrency=1, max_waiting=100, max_queued_bytes=2500))
    threading.Timer(1.0, app.release.set).start()
    statuses = asgi_burst(admission, [bytes(1000)] * 4)
    assert statuses == [200, 200, 503, 503] and app.bodies == [1000, 1000]
    assert (admission.admitted, admission.held) == (0, 0)  # all given back

    alone = Held()  # a body larger than the bound is taken when it is the only one
    alone.release.set()
    admission = Admission(alone, Limits(max_queued_bytes=10))
    assert asgi_burst(admission, [bytes(1000)]) == [200] and alone.bodies == [1000]


def test_a_body_over_the_limit_is_read_away_before_its_413():
    limits = Limits(max_body_bytes=1000)
    app = Held()
    app.release.set()
    admission = Admission(app, limits)
    assert asgi_burst(admission, [bytes(1000), bytes(1001)]) == [200, 413]
    assert (admission.admitted, admission.held) == (0, 0)


def test_a_client_leaving_mid_body_is_one_log_line(caplog):
    """Before: starlette's ClientDisconnect, logged by uvicorn as a whole ASGI traceback."""
    caplog.set_level(logging.INFO)
    limits = Limits()
    with serving(create_app(limits=limits), limits) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(
                b"POST /api/recognize HTTP/1.1\r\nHost: kyara\r\nContent-Type: image/png\r\n"
                b"Content-Length: 100000\r\n\r\n" + bytes(5000)
            )
            time.sleep(0.3)
        time.sleep(0.5)
    records = [record for record in caplog.records if record.levelno >= logging.WARNING or record.exc_info]
    assert records == [], [record.getMessage() for record in records]
    (line,) = [record.getMessage() for record in caplog.records if "went away" in record.getMessage()]
    assert line == "POST /api/recognize: the client went away after 5000 bytes of its body"


def test_a_stalled_body_gets_408_and_gives_its_place_back():
    """A client that sends part of its body and waits held its place for good: a few hundred of
    them locked every other upload out with 503."""
    limits = Limits(concurrency=1, max_waiting=0, body_idle_seconds=0.5)
    app = Held()
    app.release.set()
    admission = Admission(app, limits)
    with serving(admission, limits) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as stalled:
            stalled.sendall(
                b"POST /api/recognize HTTP/1.1\r\nHost: kyara\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n" + bytes(10)
            )
            answer = stalled.recv(4096)
            while b"stopped arriving" not in answer and (chunk := stalled.recv(4096)):
                answer += chunk  # the head and the body may come in two packets
        assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer, answer
        response = httpx.post(f"{url}/api/recognize", content=bytes(100), timeout=10)
        assert response.status_code == 200 and app.bodies == [100]
    assert (admission.admitted, admission.held) == (0, 0)


def test_the_server_keeps_memory_flat(tmp_path, monkeypatch):
    """What bounds the RSS under hostile load (benchmarks/server_fuzz.py: 1.2 GB before, see
    docs/security.md): small embedder batches; the detector keeps its arena, which its bounded
    input side bounds, but no memory pattern, which is planned for one shape."""
    from kyara.server import SERVER_EMBED_BATCH, Service

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    recognizer = Service(None, Limits()).recognizer
    assert recognizer.embedder.batch_size == SERVER_EMBED_BATCH == 4
    options = recognizer.detector.session.get_session_options()
    assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
