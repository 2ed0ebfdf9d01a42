from __future__ import annotations

import io
import json
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the server needs the serve extra")
from fastapi.testclient import TestClient

from kyara.admission import Limits
from kyara.bundle import default_model_path, load_bundle
from kyara.cli import app as cli
from kyara.gallery import enroll
from kyara.server import WEB, create_app
from tests.conftest import ROOT, drawing_module, held_out
from tests.crafted import png_header_only

EXAMPLE = ROOT / "docs" / "example.png"
LIMITS = Limits(max_body_bytes=3 * 1024 * 1024, max_pixels=4_000_000, concurrency=2)
PURPLE = ((90, 60, 160), (60, 120, 220))
ORANGE = ((230, 160, 70), (200, 60, 90))
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("server") / "model.kyara"
    shutil.copy(default_model_path(), path)
    return path


@pytest.fixture(scope="module")
def client(model) -> TestClient:
    return TestClient(create_app(model, LIMITS))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def character_picture(size: int = 360) -> Image.Image:
    """An original character on a canvas, with room around it: the detector finds one face."""
    head = drawing_module().draw_character(size, *ORANGE)
    canvas = Image.new("RGB", (size + 300, size + 80), (250, 250, 200))
    canvas.paste(head, (150, 40), head)
    return canvas


def without_colours(document: dict) -> dict:
    """animeface estimates colours by random sampling: two runs on one picture can differ."""
    return {**document, "faces": [{k: v for k, v in face.items() if k != "colors"} for face in document["faces"]]}


def cli_recognition(path: Path, model: Path, top_k: int) -> dict:
    result = runner.invoke(cli, ["recognize", str(path), "--json", "--model", str(model), "--top-k", str(top_k)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    return without_colours({**document["images"][0], "model": document["model"]})


def test_recognize_multipart_gives_the_cli_json(client, model):
    response = client.post("/api/recognize", files={"file": ("example.png", EXAMPLE.read_bytes(), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert without_colours(body) == {**cli_recognition(EXAMPLE, model, 5), "path": "example.png"}
    assert len(body["faces"]) == 3 and all(len(face["top_k"]) == 5 for face in body["faces"])


def test_recognize_raw_body_of_a_real_illustration_with_top_k(client, model):
    illustration = held_out("illustration_test_files")[0]
    response = client.post(
        "/api/recognize?top_k=2", content=illustration.read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200
    assert without_colours(response.json()) == {**cli_recognition(illustration, model, 2), "path": "<body>"}


def test_detect_gives_the_detector_boxes(client):
    import kyara

    response = client.post("/api/detect", content=EXAMPLE.read_bytes())
    assert response.status_code == 200
    body = response.json()
    assert body["detector"] == "cnn" and (body["width"], body["height"]) == (1300, 620)
    assert (
        without_colours(body)["faces"]
        == without_colours({"faces": [f.to_dict() for f in kyara.detect(EXAMPLE)]})["faces"]
    )
    located = client.post("/api/detect?landmarks=true", content=EXAMPLE.read_bytes()).json()["faces"]
    assert [face["box"] for face in located] == [face["box"] for face in body["faces"]]
    assert all(
        len(face["landmarks"]) == 5 and {"skin", "left_eye", "right_eye"} <= set(face["colors"]) for face in located
    )
    assert not any(face["landmarks"] for face in body["faces"])
    named = client.post("/api/recognize?landmarks=true", content=EXAMPLE.read_bytes()).json()["faces"]
    assert [face["box"] for face in named] == [face["box"] for face in located]
    assert all(len(face["landmarks"]) == 5 and "top_k" in face for face in named)


def test_health_names_the_model_and_its_characters(client, model):
    body = client.get("/api/health").json()
    bundle = load_bundle(model)
    assert body["model"] == {**bundle.describe(), "precision": "float32"} and body["characters"] == bundle.all_labels()
    assert body["limits"] == {
        "max_body_bytes": 3 * 1024 * 1024,
        "max_pixels": 4_000_000,
        "concurrency": 2,
        "max_waiting": 256,
        "max_queued_bytes": 128 * 1024 * 1024,
        "body_idle_seconds": 15.0,
        "body_seconds": 120.0,
        "max_explained_faces": 8,
    }
    assert body["writes"] == "open"


def chunks(data: bytes, size: int = 256 * 1024):
    """A body without Content-Length (chunked): the limit must be enforced on what arrives."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


BAD_REQUESTS = {
    "truncated png": (
        400,
        "truncated",
        {"content": EXAMPLE.read_bytes()[:2000], "headers": {"content-type": "image/png"}},
    ),
    "empty body": (400, "empty", {"content": b"", "headers": {"content-type": "image/png"}}),
    "random bytes": (400, "not a readable image", {"content": bytes(range(256)) * 8}),
    "text body": (415, "text/plain", {"content": b"hello", "headers": {"content-type": "text/plain"}}),
    "pdf file": (415, "application/pdf", {"files": {"file": ("a.pdf", b"%PDF-1.4\n", "application/pdf")}}),
    "svg file": (415, "image/svg+xml", {"files": {"file": ("a.svg", b"<svg/>", "image/svg+xml")}}),
    "form fields": (415, "urlencoded", {"data": {"file": "x"}}),
    "pixel bomb": (413, "exceeds the limit", {"content": png_header_only(30_000, 30_000)}),
    "too many pixels": (413, "exceeds the limit", {"content": png(Image.new("RGB", (2500, 2000), (9, 9, 9)))}),
    "large body": (413, "larger than the limit", {"content": b"\0" * (4 * 1024 * 1024)}),
    "large chunked body": (413, "larger than the limit", {"content": chunks(b"\0" * (4 * 1024 * 1024))}),
    "no file field": (422, "'file'", {"files": {"picture": ("a.png", b"x", "image/png")}}),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_its_4xx_as_json(client, case):
    status, message, request = BAD_REQUESTS[case]
    response = client.post("/api/recognize", **request)
    assert response.status_code == status
    assert response.json() == {"error": response.json()["error"], "status": status}
    assert message in response.json()["error"]


@pytest.mark.parametrize("query", ["top_k=0", "top_k=abc", "top_k=1000"])
def test_bad_parameters_get_422(client, query):
    response = client.post(f"/api/recognize?{query}", content=EXAMPLE.read_bytes())
    assert response.status_code == 422 and response.json()["error"].startswith("top_k: ")


def test_explain_maps_every_face_for_the_name_recognize_gives(client, face_crop_path):
    picture = face_crop_path.read_bytes()
    recognized = client.post("/api/recognize", content=picture).json()
    response = client.post("/api/explain", files={"file": (face_crop_path.name, picture, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {key: body[key] for key in ("path", "width", "height", "model")} == {
        **{key: recognized[key] for key in ("width", "height", "model")},
        "path": face_crop_path.name,
    }
    assert len(body["faces"]) == len(recognized["faces"]) >= 1
    for explained, face in zip(body["faces"], recognized["faces"]):
        assert explained["box"] == face["box"] and explained["fallback"] == face["fallback"]
        assert explained["label"] == face["top_k"][0]["label"] and explained["versus"] is None
        assert explained["known"] == (face["label"] is not None)
        heatmap = np.array(explained["heatmap"])
        assert heatmap.shape == (32, 32) and np.isfinite(heatmap).all() and np.abs(heatmap).max() > 0
        assert 0 < explained["score"] <= 1  # the cosine similarity to its best guess


def test_explain_why_one_character_and_not_another(client, face_crop_path):
    picture = face_crop_path.read_bytes()
    face = client.post("/api/recognize", content=picture).json()["faces"][0]
    first, second = (guess["label"] for guess in face["top_k"][:2])
    query = urlencode({"label": first, "versus": second})
    response = client.post(f"/api/explain?{query}", content=picture, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    explained = response.json()["faces"][0]
    assert (explained["label"], explained["versus"]) == (first, second)
    assert explained["score"] > 0  # the best guess is more similar than the runner-up
    reverse = client.post(f"/api/explain?{urlencode({'label': second, 'versus': first})}", content=picture)
    assert reverse.json()["faces"][0]["score"] == pytest.approx(-explained["score"], abs=2e-4)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("label=Nobody", "does not know 'Nobody'"),
        ("versus=Nobody", "does not know 'Nobody'"),
        ("label=gura&versus=gura", "against itself"),
        ("label=", "label: "),
    ],
)
def test_explain_unknown_or_same_characters_get_422(client, query, message):
    response = client.post(f"/api/explain?{query}", content=EXAMPLE.read_bytes())
    assert response.status_code == 422 and response.json()["status"] == 422
    assert message in response.json()["error"]


def test_explain_maps_at_most_the_configured_number_of_faces(model):
    capped = TestClient(create_app(model, Limits(max_explained_faces=1)))
    found = capped.post("/api/detect", content=EXAMPLE.read_bytes()).json()["faces"]
    explained = capped.post("/api/explain", content=EXAMPLE.read_bytes()).json()["faces"]
    assert len(found) == 3 and [face["box"] for face in explained] == [found[0]["box"]]


@pytest.mark.parametrize("case", ["truncated png", "random bytes", "text body", "pdf file", "large body", "pixel bomb"])
def test_explain_bad_input_gets_the_same_4xx_as_recognize(client, case):
    status, message, request = BAD_REQUESTS[case]
    response = client.post("/api/explain", **request)
    assert response.status_code == status and response.json()["status"] == status
    assert message in response.json()["error"]


def test_enroll_by_box_recognize_list_and_forget(client, model):
    picture = png(character_picture())
    name = "Aoi/オレンジ (OC)"
    before = client.post("/api/recognize", content=picture).json()["faces"]
    # Our own character, which the model never saw (it may still take a known name: README).
    assert len(before) == 1 and before[0]["label"] != name
    x, y, w, h = before[0]["box"]
    url = "/api/characters/Aoi%2F%E3%82%AA%E3%83%AC%E3%83%B3%E3%82%B8%20(OC)/images"
    response = client.post(f"{url}?x={x}&y={y}&w={w}&h={h}&angle=0", files={"file": ("aoi.png", picture, "image/png")})
    assert response.status_code == 201, response.text
    assert response.json() == {"name": name, "added": 1, "skipped": 0}

    after = client.post("/api/recognize", content=png(character_picture(300))).json()["faces"]
    assert [face["label"] for face in after] == [name]  # the running server sees the enrolled face
    listed = client.get("/api/characters").json()
    assert {"name": name, "trained": False, "training_images": 0, "enrolled_images": 1} in listed
    assert name in client.get("/api/health").json()["characters"]
    assert name in load_bundle(model).gallery_labels

    response = client.delete(url.removesuffix("/images"))
    assert response.status_code == 200 and response.json() == {"name": name, "removed": 1}
    assert client.post("/api/recognize", content=picture).json()["faces"][0]["label"] != name
    assert client.delete(url.removesuffix("/images")).status_code == 404
    assert name not in load_bundle(model).all_labels()


def test_bad_enrollments_change_nothing(client, model):
    before = model.read_bytes()
    blank = png(Image.new("RGB", (900, 600), (255, 255, 255)))
    picture = png(character_picture())
    cases = [
        ("/api/characters/bad%09name/images", {"content": picture}, 422, "printable"),
        ("/api/characters/Aoi/images?x=1&y=2", {"content": picture}, 422, "x, y, w and h"),
        ("/api/characters/Aoi/images?x=5000&y=0&w=10&h=10", {"content": picture}, 422, "outside"),
        ("/api/characters/Aoi/images?x=0&y=0&w=0&h=10", {"content": picture}, 422, "w: "),
        ("/api/characters/Aoi/images", {"content": blank}, 422, "no face found"),
        ("/api/characters/Aoi/images", {"content": b"GIF89a broken"}, 400, "not a readable image"),
        ("/api/characters/Aoi/images", {"content": b"plain", "headers": {"content-type": "text/plain"}}, 415, "text"),
    ]
    for url, request, status, message in cases:
        response = client.post(url, **request)
        assert (response.status_code, response.json()["status"]) == (status, status), (url, response.text)
        assert message in response.json()["error"], (url, response.text)
    assert client.delete("/api/characters/Nobody").status_code == 404
    assert model.read_bytes() == before


def test_concurrent_enrollments_are_both_kept(client, model):
    crops = {
        name: png(drawing_module().draw_character(200, *colours).convert("RGB"))
        for name, colours in (("Left", PURPLE), ("Right", ORANGE))
    }
    statuses = []

    def enroll(name: str) -> None:
        statuses.append(client.post(f"/api/characters/{name}/images", content=crops[name]).status_code)

    threads = [threading.Thread(target=enroll, args=(name,)) for name in crops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201, 201]
    assert {"Left", "Right"} <= set(load_bundle(model).gallery_labels)
    assert {"Left", "Right"} <= set(client.get("/api/health").json()["characters"])
    for name in crops:
        assert client.delete(f"/api/characters/{name}").status_code == 200


def test_default_model_enrollment_goes_to_the_users_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    shipped = default_model_path().read_bytes()
    client = TestClient(create_app())
    crop = png(drawing_module().draw_character(200, *PURPLE).convert("RGB"))
    assert client.post("/api/characters/Aoi/images", files={"file": ("aoi.png", crop, "image/png")}).status_code == 201
    assert "Aoi" in load_bundle(tmp_path / "kyara" / "model.kyara").gallery_labels
    assert "Aoi" in [entry["name"] for entry in client.get("/api/characters").json()]
    assert default_model_path().read_bytes() == shipped


def test_the_character_list_is_the_served_models(tmp_path):
    model = tmp_path / "model.kyara"
    shutil.copyfile(default_model_path(), model)
    client = TestClient(create_app(model))
    crop = drawing_module().draw_character(200, *PURPLE).convert("RGB")
    enroll("Outside", [crop], model)  # `kyara enroll --model` from a shell, while the server runs
    listed = [entry["name"] for entry in client.get("/api/characters").json()]
    assert listed == client.get("/api/health").json()["characters"] and "Outside" not in listed


def test_page_and_docs_are_served_without_external_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and 'src="app.js"' in page.text and 'href="style.css"' in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/{asset}").status_code == 200
    for file in WEB.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", file.read_text()), (
            f"{file.name} loads from outside"
        )
    docs = client.get("/docs")
    assert docs.status_code == 200 and not re.search(r"https?://", docs.text)
    for asset in re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', docs.text):
        assert client.get(asset).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/recognize",
        "/api/explain",
        "/api/detect",
        "/api/characters",
        "/api/characters/{name}/images",
        "/api/health",
    } <= set(paths)
    assert client.get("/no/such/page").json() == {"error": "Not Found", "status": 404}


def test_serve_command_passes_limits_and_address(model, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **options: calls.append((application, options)))
    arguments = ["serve", "--model", str(model), "--port", "8123", "--max-body-mb", "1", "--concurrency", "3"]
    arguments += ["--max-waiting", "5"]
    result = runner.invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    ((application, options),) = calls
    # Uvicorn's own cap, which answers in plain text, lies far beyond what kyara admits.
    assert options == {"host": "127.0.0.1", "port": 8123, "limit_concurrency": 4096, "backlog": 4096}
    limits = TestClient(application).get("/api/health").json()["limits"]
    assert limits == {
        "max_body_bytes": 1024 * 1024,
        "max_pixels": Limits().max_pixels,
        "concurrency": 3,
        "max_waiting": 5,
        "max_queued_bytes": Limits().max_queued_bytes,
        "body_idle_seconds": Limits().body_idle_seconds,
        "body_seconds": Limits().body_seconds,
        "max_explained_faces": Limits().max_explained_faces,
    }
    calls.clear()
    result = runner.invoke(cli, ["serve", "--model", str(model), "--detector", "animeface"])
    ((application, options),) = calls
    faces = TestClient(application).post("/api/detect", content=EXAMPLE.read_bytes()).json()["faces"]
    assert result.exit_code == 0 and len(faces) == 3 and all(face["landmarks"] for face in faces)
    missing = runner.invoke(cli, ["serve", "--model", str(model.with_name("missing.kyara"))])
    assert missing.exit_code == 2 and "no such model" in missing.output


def test_a_full_queue_is_answered_503_with_retry_after(model):
    """One worker busy, one request waiting: the next is refused at once instead of piling up."""
    import anyio
    from starlette.exceptions import HTTPException

    from kyara.server import Service

    service = Service(model, Limits(concurrency=1, max_waiting=1))
    release = threading.Event()
    outcomes = []

    async def call() -> None:
        try:
            outcomes.append(await service.run(release.wait, 10))
        except HTTPException as exc:
            outcomes.append((exc.status_code, exc.headers))

    async def burst() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(call)
                await anyio.sleep(0.1)
            release.set()

    anyio.run(burst)
    assert outcomes[0] == (503, {"Retry-After": "1"}) and outcomes[1:] == [True, True]

    idle = Service(model, Limits(concurrency=1, max_waiting=0))  # no queue: only a busy worker refuses
    assert anyio.run(idle.run, sum, [1, 2]) == 3


def test_enrollment_finds_faces_with_the_servers_own_detector(tmp_path):
    """kyara serve --detector X enrolls with X too, and opens no new ONNX sessions to do it."""
    from kyara.detection import CnnDetector

    class Counting(CnnDetector):
        calls = 0

        def detect(self, image):
            Counting.calls += 1
            return super().detect(image)

    model = tmp_path / "model.kyara"
    shutil.copyfile(default_model_path(), model)
    client = TestClient(create_app(model, LIMITS, Counting()))
    crop = png(drawing_module().draw_character(200, *PURPLE).convert("RGB"))
    before = Counting.calls
    response = client.post("/api/characters/Aoi/images", files={"file": ("aoi.png", crop, "image/png")})
    assert response.status_code == 201, response.text
    assert Counting.calls > before and "Aoi" in load_bundle(model).gallery_labels
