"""Hostile requests against `kyara serve`, then a burst of ordinary ones, on loopback. Prints JSON.

    nice -n 10 python benchmarks/server_fuzz.py [--requests 10000] [--concurrency 8] [--burst 200]

Starts the server (built-in model, default limits, a write token) in a subprocess on a free
loopback port and sends `--requests` hostile requests, `--concurrency` at a time: corrupt,
truncated and bit-flipped files of every format kyara reads, odd image modes, pixel bombs, large
and chunked bodies, malformed multipart, hostile character names (with and without the token),
bad parameters, odd methods and paths. While they run, `--burst` ordinary requests (one face
crop each) are sent all at once. Reports:

- status_counts, server_errors (5xx; target 0), not_json (answers from /api that are not
  JSON; target 0), dropped (connections reset or refused; target 0);
- burst: the status counts of the ordinary requests (target: all 200);
- latency_ms p50/p95 of the hostile requests and of the burst;
- rss_mb before (after start-up and one warm-up request) and after the whole run
  (target: < 500), and the peak.

Exits with status 1 when a target is missed. `hostile_cases` is also used by tests/test_server_fuzz.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the crafted files are shared with the tests, in tests/
from tests.crafted import png_header_only  # noqa: E402

TOKEN = "fuzz-token"
FORMATS = {
    "PNG": ("image/png", ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")),
    "JPEG": ("image/jpeg", ("L", "RGB", "CMYK")),
    "WEBP": ("image/webp", ("RGB", "RGBA")),
    "GIF": ("image/gif", ("L", "P")),
    "BMP": ("image/bmp", ("1", "L", "P", "RGB")),
    "TIFF": ("image/tiff", ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F", "I;16")),
}
NAMES = [
    "%ff%fe", "%80%81", "Bob%ff", "%ED%A0%80", "%00", "a%00b", "%20", "..", ".", "%2E%2E", "..%2F..%2Fetc%2Fpasswd",
    "%2F", "a%2F..%2F..%2Fb", "x" * 300, "%E2%80%AE" + "gnp.exe", "%0Aname", "%1B%5B31m", "Ame%CC%81lie",
    "%F0%9F%98%80", "%25ff", "CON", "nul", "a/b/c", "%EF%BF%BD", "%20Bob%20", "%C0%AF", "%E3%82%AA" * 40,
]  # fmt: skip


@dataclass
class Case:
    kind: str
    method: str = "POST"
    path: str = "/api/recognize"
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: list | None = None
    chunked: bool = False


@cache
def picture(mode: str, size: tuple[int, int] = (96, 64)) -> Image.Image:
    noise = Image.effect_noise(size, 64).convert("RGB")
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    image = Image.blend(noise, gradient, 0.5)
    if mode in ("I", "F", "I;16"):
        return image.convert("L").convert(mode)
    return image.convert(mode)


@cache
def encoded(fmt: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    picture(mode).save(buffer, fmt)
    return buffer.getvalue()


@cache
def bombs() -> list[tuple[str, bytes]]:
    """Small files that claim or hold far more pixels than the limit."""
    out = [
        ("png header 30k x 30k", png_header_only(30_000, 30_000)),
        ("png header 1 x 10^9", png_header_only(1, 10**9)),
    ]
    for fmt in ("PNG", "GIF", "TIFF", "BMP"):
        buffer = io.BytesIO()
        Image.new("1" if fmt != "GIF" else "P", (12_000, 12_000)).save(
            buffer, fmt, **({"compression": "group4"} if fmt == "TIFF" else {})
        )
        out.append((f"{fmt} 144 Mpx", buffer.getvalue()))
    jpeg = bytearray(encoded("JPEG", "RGB"))
    at = jpeg.find(b"\xff\xc0")
    jpeg[at + 5 : at + 9] = (60_000).to_bytes(2, "big") * 2  # SOF0 claims 60000 x 60000
    out.append(("jpeg sof 60k x 60k", bytes(jpeg)))
    webp = bytearray(encoded("WEBP", "RGB"))
    out.append(("webp", bytes(webp[:30]) + b"\xff" * 10 + bytes(webp[40:])))
    return out


def mutated(data: bytes, draw: random.Random) -> tuple[str, bytes]:
    how = draw.choice(["truncate", "flip", "zero head", "garbage tail", "shuffle", "only head"])
    if how == "truncate":
        return how, data[: draw.randrange(0, max(1, len(data)))]
    if how == "flip":
        flipped = bytearray(data)
        for _ in range(draw.randint(1, 20)):
            at = draw.randrange(len(flipped))
            flipped[at] ^= 1 << draw.randrange(8)
        return how, bytes(flipped)
    if how == "zero head":
        return how, bytes(16) + data[16:]
    if how == "garbage tail":
        return how, data + draw.randbytes(draw.randint(1, 4000))
    if how == "shuffle":
        middle = bytearray(data[16:])
        draw.shuffle(middle)
        return how, data[:16] + bytes(middle)
    return how, data[:64]


def multipart(parts: list[tuple[str, str, bytes, str]], boundary: str = "fuzzboundary") -> tuple[bytes, str]:
    body = b""
    for field_name, filename, data, kind in parts:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
                f"Content-Type: {kind}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def hostile_case(draw: random.Random, large: bool = True) -> Case:
    """One hostile request. `large`: include 21 MiB bodies and large allowed pictures (slow)."""
    roll = draw.random()
    fmt = draw.choice(list(FORMATS))
    kind, modes = FORMATS[fmt]
    data = encoded(fmt, draw.choice(modes))
    if roll < 0.35:
        how, broken = mutated(data, draw)
        endpoint = draw.choice(["/api/recognize", "/api/detect", "/api/recognize", "/api/explain"])
        if draw.random() < 0.5:
            return Case(f"{fmt} {how} multipart", path=endpoint, files=[("file", ("x", broken, kind))])
        return Case(f"{fmt} {how}", path=endpoint, content=broken, headers={"content-type": draw.choice([kind, ""])})
    if roll < 0.45:
        return Case(f"{fmt} intact odd mode", path=draw.choice(["/api/recognize", "/api/detect"]), content=data)
    if roll < 0.52:
        name, bomb = draw.choice(bombs())
        return Case(f"bomb {name}", path=draw.choice(["/api/recognize", "/api/explain", "/api/detect"]), content=bomb)
    if roll < 0.64:
        name = draw.choice(NAMES)
        token = {"authorization": f"Bearer {draw.choice([TOKEN, 'wrong', ''])}".strip()} if draw.random() < 0.7 else {}
        if draw.random() < 0.5:
            return Case("delete hostile name", "DELETE", f"/api/characters/{name}", headers=token)
        broken = mutated(data, draw)[1]  # never a picture to learn: the model stays as it is
        return Case("enroll hostile name", path=f"/api/characters/{name}/images", content=broken, headers=token)
    if roll < 0.74:
        query = draw.choice([
            "top_k=0", "top_k=-1", "top_k=1e9", "top_k=abc", "top_k=", "top_k=5&top_k=x", "label=" + "x" * 5000,
            "label=%ff", "versus=%00", "x=1&y=2&w=3", "x=nan&y=0&w=1&h=1", "angle=inf", "angle=nan", "w=0",
            "x=99999999999999999999&y=0&w=1&h=1", "%zz=1", "top_k=%ff",
        ])  # fmt: skip
        path = draw.choice(["/api/recognize", "/api/explain", "/api/characters/Aoi/images"])
        return Case(f"bad query {query[:20]}", path=f"{path}?{query}", content=mutated(data, draw)[1],
                    headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
    if roll < 0.84:
        choice = draw.randrange(7)
        if choice == 0:
            body, kind = multipart([("file", "a.png", data, "image/png")], "b")
            return Case(
                "multipart wrong boundary", content=body, headers={"content-type": "multipart/form-data; boundary=zz"}
            )
        if choice == 1:
            return Case("multipart no boundary", content=data, headers={"content-type": "multipart/form-data"})
        if choice == 2:
            body, kind = multipart([("file", f"{i}.png", data, "image/png") for i in range(30)])
            return Case("30 files", path="/api/characters/Aoi/images", content=body, headers={"content-type": kind})
        if choice == 3:
            body, kind = multipart([("file", "a.png", data, "image/png")])
            return Case("multipart cut", content=body[: len(body) // 2], headers={"content-type": kind})
        if choice == 4:
            body, kind = multipart([("picture", "a.png", data, "image/png"), ("file", "a", b"", "text/html")])
            return Case("multipart odd fields", content=body, headers={"content-type": kind})
        if choice == 5:
            return Case("declared type", content=data, headers={"content-type": draw.choice(
                ["text/html", "image/svg+xml", "application/pdf", "image/png; charset=x", "\x7f", "image/" + "x" * 900]
            )})  # fmt: skip
        return Case("empty", content=b"", headers={"content-type": kind})
    if roll < 0.94:
        method, path = draw.choice([
            ("PUT", "/api/recognize"), ("PATCH", "/api/characters/gura"), ("GET", "/api/recognize"),
            ("GET", "/../../etc/passwd"), ("GET", "/docs-assets/../../../etc/passwd"),
            ("GET", "/%2e%2e/%2e%2e/etc/passwd"),
            ("GET", "/api/characters/%ff"), ("OPTIONS", "/api/recognize"), ("DELETE", "/api/recognize"),
            ("GET", "/" + "a" * 4000), ("POST", "/api/health"), ("GET", "/api/health?x=%ff"),
        ])  # fmt: skip
        return Case(f"{method} odd path", method, path, content=b"x" if method in ("PUT", "PATCH") else None)
    if large and roll < 0.96:
        chunked = draw.random() < 0.5
        return Case("21 MiB body" + " chunked" * chunked, content=bytes(21 * 1024 * 1024), chunked=chunked)
    if large and roll < 0.965:
        side = draw.choice([(4400, 4400), (5000, 3900)])  # under the 20 Mpx limit: decoded
        return Case("large allowed picture", content=large_picture(side), headers={"content-type": "image/png"})
    return Case("random bytes", content=draw.randbytes(draw.randint(0, 3000)))


@cache
def large_picture(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def hostile_cases(count: int, seed: int = 0, large: bool = True) -> list[Case]:
    draw = random.Random(seed)
    return [hostile_case(draw, large) for _ in range(count)]


def face_crop() -> bytes:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example", ROOT / "docs" / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    buffer = io.BytesIO()
    module.draw_character(160, (90, 60, 160), (60, 120, 220)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


async def send(client, case: Case) -> dict:
    started = time.perf_counter()
    try:
        content = case.content
        if case.chunked:
            data = case.content

            async def pieces():
                for start in range(0, len(data), 1 << 20):
                    yield data[start : start + (1 << 20)]

            content = pieces()
        response = await client.request(case.method, case.path, content=content, files=case.files, headers=case.headers)
        status, kind = response.status_code, response.headers.get("content-type", "")
    except Exception as exc:  # every failure to get an answer is counted
        status, kind = -1, type(exc).__name__
    json_answer = kind.startswith("application/json") or not case.path.startswith("/api/")
    return {"kind": case.kind, "status": status, "json": json_answer, "error": kind if status < 0 else None,
            "seconds": time.perf_counter() - started}  # fmt: skip


async def run(url: str, cases: list[Case], concurrency: int, burst: int, crop: bytes) -> tuple[list, list]:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def hostile(case):
            async with gate:
                return await send(client, case)

        async def ordinary():
            await asyncio.sleep(1.0)  # while hostile requests are in flight
            ordinary_case = Case("ordinary", files=[("file", ("crop.png", crop, "image/png"))])
            return await asyncio.gather(*(send(client, ordinary_case) for _ in range(burst)))

        results = await asyncio.gather(ordinary(), *(hostile(case) for case in cases))
    return list(results[1:]), list(results[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}  # fmt: skip


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    if len(seconds) < 2:
        return {}
    cuts = statistics.quantiles(seconds, n=20, method="inclusive")
    return {"p50": round(1000 * statistics.median(seconds), 1), "p95": round(1000 * cuts[18], 1)}


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8, help="Hostile requests in flight at once.")
    parser.add_argument("--burst", type=int, default=200, help="Ordinary requests sent all at once.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-log", default=os.devnull, help="Where the server's output goes.")
    args = parser.parse_args()

    cases = hostile_cases(args.requests, args.seed)
    crop = face_crop()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home, open(args.server_log, "w") as log:
        command = [sys.executable, "-c", "from kyara.cli import app; app()", "serve", "--port", str(port)]
        environment = {**os.environ, "XDG_DATA_HOME": home, "KYARA_TOKEN": TOKEN}
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                try:
                    httpx.get(f"{url}/api/health", timeout=2)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            httpx.post(f"{url}/api/recognize", content=crop, timeout=60)  # warm-up
            before = memory_mb(server.pid)["rss_mb"]
            started = time.perf_counter()
            hostile, ordinary = asyncio.run(run(url, cases, args.concurrency, args.burst, crop))
            wall = time.perf_counter() - started
            time.sleep(1)
            after = memory_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)

    every = hostile + ordinary
    report = {
        "requests": len(hostile),
        "burst": args.burst,
        "cpu_count": os.cpu_count(),
        "wall_s": round(wall, 1),
        "status_counts": dict(sorted(Counter(str(r["status"]) for r in hostile).items())),
        "burst_status_counts": dict(Counter(str(r["status"]) for r in ordinary)),
        "server_errors": sum(r["status"] >= 500 for r in every),
        "server_error_kinds": dict(Counter(f"{r['kind']}: {r['status']}" for r in every if r["status"] >= 500)),
        "not_json": sum(r["status"] > 0 and not r["json"] for r in every),
        "dropped": sum(r["status"] < 0 for r in every),
        "dropped_kinds": dict(Counter(f"{r['kind']}: {r['error']}" for r in every if r["status"] < 0)),
        "latency_ms": percentiles_ms([r["seconds"] for r in hostile if r["status"] > 0]),
        "latency_ms_burst": percentiles_ms([r["seconds"] for r in ordinary if r["status"] > 0]),
        "rss_mb_before": before,
        "rss_mb_after": after["rss_mb"],
        "peak_rss_mb": after["peak_rss_mb"],
    }
    print(json.dumps(report, indent=2))
    missed = report["server_errors"] or report["not_json"] or report["dropped"] or after["rss_mb"] >= 500
    raise SystemExit(1 if missed or set(report["burst_status_counts"]) != {"200"} else 0)


if __name__ == "__main__":
    main()
