"""Load on `kyara serve`: good and bad images at once, on loopback. Prints JSON.

    nice -n 10 python benchmarks/server_load.py [--requests 200] [--concurrency 8]

Starts the server (built-in model, default limits) in a subprocess on a free loopback port, sends
`--requests` requests (half good: real illustrations and face crops from ../shared/data; half bad
inputs of ten kinds; shuffled) with at most `--concurrency` in flight, and reports:

- status_counts, server_errors (5xx; target 0), dropped_connections (target 0) and unexpected
  (requests not answered with the status their input calls for: 200 for a good image, its 4xx
  for a bad one);
- latency_ms p50/p95 over all requests, and for good and bad ones apart; requests_per_s;
- rss_mb: the server's resident memory after the load (target < 500), and peak_rss_mb.

Exits with status 1 when a request got a 5xx or an unexpected status.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from kyara.imageio import list_images

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LARGE_BODY = 21 * 1024 * 1024  # over the default 20 MiB limit


@dataclass(frozen=True)
class Case:
    kind: str
    expected: int
    data: bytes | None = None
    content_type: str = "application/octet-stream"
    query: str = ""
    multipart: bool = False
    chunked: bool = False


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def good_cases(count: int) -> list[Case]:
    """Real illustrations (several faces, rotated retries: the slow path) and face crops."""
    draw = random.Random(0)
    chosen = []
    for folder in (DATA / "newgame-illustrations", DATA / "holoen-faces"):
        paths = list_images(folder) if folder.is_dir() else []
        chosen += draw.sample(paths, min(count // 2, len(paths)))
    if not chosen:
        print(f"{DATA} is missing: using docs/example.png as the only good image", file=sys.stderr)
        chosen = [ROOT / "docs" / "example.png"]
    return [Case("good", 200, path.read_bytes(), multipart=True) for path in chosen]


def bad_cases() -> list[Case]:
    picture = png(Image.new("RGB", (800, 600), (200, 120, 90)))
    return [
        Case("truncated", 400, picture[: len(picture) // 3], "image/png"),
        Case("random bytes", 400, random.Random(1).randbytes(5000)),
        Case("empty", 400, b"", "image/png"),
        Case("text", 415, b"not a picture", "text/plain"),
        Case("pdf", 415, b"%PDF-1.4\n%...", "application/pdf", multipart=True),
        Case("pixel bomb", 413, png(Image.new("1", (12_000, 12_000))), "image/png"),  # 144 Mpx in 20 kB
        Case("too many pixels", 413, png(Image.new("RGB", (5000, 4500), (30, 30, 30))), "image/png"),
        Case("large body", 413, bytes(LARGE_BODY)),
        Case("large chunked body", 413, bytes(LARGE_BODY), chunked=True),
        Case("bad top_k", 422, picture, "image/png", query="?top_k=0"),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, home: str) -> subprocess.Popen:
    command = [sys.executable, "-c", "from kyara.cli import app; app()", "serve", "--port", str(port)]
    # An empty data home: the built-in model, not the user's enrolled copy.
    return subprocess.Popen(
        command, env={**os.environ, "XDG_DATA_HOME": home}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_ready(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer within {seconds} s")


async def send(client: httpx.AsyncClient, case: Case) -> tuple[int, float]:
    url = f"/api/recognize{case.query}"
    started = time.perf_counter()
    if case.multipart:
        response = await client.post(url, files={"file": ("upload", case.data, case.content_type)})
    elif case.chunked:

        async def pieces():
            for start in range(0, len(case.data), 1 << 20):
                yield case.data[start : start + (1 << 20)]

        response = await client.post(url, content=pieces(), headers={"content-type": case.content_type})
    else:
        response = await client.post(url, content=case.data, headers={"content-type": case.content_type})
    return response.status_code, time.perf_counter() - started


async def run_load(url: str, cases: list[Case], concurrency: int, deadline_s: float) -> list[dict]:
    gate = asyncio.Semaphore(concurrency)
    results: list[dict] = []

    async def one(client: httpx.AsyncClient, case: Case) -> None:
        async with gate:
            try:
                status, seconds = await send(client, case)
            except httpx.HTTPError as exc:  # a refused or dropped connection counts against the server
                status, seconds = -1, float("nan")
                print(f"{case.kind}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            results.append({"kind": case.kind, "expected": case.expected, "status": status, "seconds": seconds})

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await asyncio.wait_for(asyncio.gather(*(one(client, case) for case in cases)), deadline_s)
    return results


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        key: round(int(fields[name].split()[0]) / 1024, 1)
        for key, name in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))
    }


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    cuts = statistics.quantiles(seconds, n=20, method="inclusive") if len(seconds) > 1 else seconds * 19
    return {"p50": round(1000 * statistics.median(seconds), 1), "p95": round(1000 * cuts[18], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once.")
    parser.add_argument("--deadline", type=float, default=900, help="Give up after this many seconds.")
    args = parser.parse_args()

    good, bad = good_cases(args.requests // 2), bad_cases()
    cases = [good[i % len(good)] for i in range(args.requests // 2)]
    cases += [bad[i % len(bad)] for i in range(args.requests - len(cases))]
    random.Random(2).shuffle(cases)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        server = start_server(port, home)
        try:
            wait_ready(url, server)
            started = time.perf_counter()
            results = asyncio.run(run_load(url, cases, args.concurrency, args.deadline))
            wall = time.perf_counter() - started
            memory = memory_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)

    answered = [r for r in results if r["status"] > 0]
    unexpected = [r for r in results if r["status"] != r["expected"]]
    report = {
        "requests": len(results),
        "good": sum(r["kind"] == "good" for r in results),
        "bad": sum(r["kind"] != "good" for r in results),
        "client_concurrency": args.concurrency,
        "cpu_count": os.cpu_count(),
        "wall_s": round(wall, 1),
        "requests_per_s": round(len(results) / wall, 2),
        "latency_ms": percentiles_ms([r["seconds"] for r in answered]),
        "latency_ms_good": percentiles_ms([r["seconds"] for r in answered if r["kind"] == "good"]),
        "latency_ms_bad": percentiles_ms([r["seconds"] for r in answered if r["kind"] != "good"]),
        "status_counts": dict(sorted(Counter(str(r["status"]) for r in results).items())),
        "server_errors": sum(r["status"] >= 500 for r in results),
        "dropped_connections": sum(r["status"] < 0 for r in results),
        "unexpected": [{k: r[k] for k in ("kind", "expected", "status")} for r in unexpected[:10]],
        **memory,
    }
    print(json.dumps(report, indent=2))
    raise SystemExit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
