"""Issue 15: who may change the model, how names in addresses are read, a full disk."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the server needs the serve extra")
from fastapi.testclient import TestClient

from kyara.bundle import default_model_path, load_bundle
from kyara.cli import app as cli
from kyara.errors import KyaraError, StorageError
from kyara.server import create_app
from tests.conftest import drawing_module
from tests.test_server import PURPLE, png

runner = CliRunner()
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def crop() -> bytes:
    return png(drawing_module().draw_character(200, *PURPLE).convert("RGB"))


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.kyara"
    shutil.copy(default_model_path(), path)
    return path


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_with_a_token_only_its_bearer_may_enroll_and_remove(model, crop):
    client = TestClient(create_app(model, token=TOKEN))
    before = model.read_bytes()
    refused = [
        client.post("/api/characters/Aoi/images", content=crop),
        client.post("/api/characters/Aoi/images", content=crop, headers=bearer("wrong")),
        client.post("/api/characters/Aoi/images", content=crop, headers={"authorization": TOKEN}),
        client.post("/api/characters/Aoi/images", content=crop, headers=bearer(TOKEN + "x")),
        client.delete("/api/characters/gura"),
        client.delete("/api/characters/gura", headers=bearer("")),
        # Refused before its body is taken in: no 413 for a body over the limit.
        client.post("/api/characters/Aoi/images", content=bytes(21 << 20)),
    ]
    for response in refused:
        assert response.status_code == 401 and response.json()["status"] == 401
        assert "token" in response.json()["error"] and response.headers["www-authenticate"] == "Bearer"
    assert model.read_bytes() == before
    # Reading needs no token.
    assert client.post("/api/recognize", content=crop).status_code == 200
    assert client.get("/api/health").json()["writes"] == "token"

    response = client.post("/api/characters/Aoi/images", content=crop, headers=bearer(TOKEN))
    assert response.status_code == 201, response.text
    response = client.delete("/api/characters/Aoi", headers={"authorization": f"bearer  {TOKEN}"})
    assert response.status_code == 200 and "Aoi" not in load_bundle(model).all_labels()


def test_a_read_only_server_refuses_every_change(model, crop):
    client = TestClient(create_app(model, read_only=True, host="0.0.0.0"))
    before = model.read_bytes()
    for response in (
        client.post("/api/characters/Aoi/images", content=crop),
        client.delete("/api/characters/gura"),
    ):
        assert response.status_code == 403 and "read-only" in response.json()["error"]
    assert model.read_bytes() == before
    assert client.get("/api/health").json()["writes"] == "read-only"
    assert client.post("/api/recognize", content=crop).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_serves_writes_without_a_token(model, host):
    assert TestClient(create_app(model, host=host)).get("/api/health").json()["writes"] == "open"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_beyond_loopback_writes_need_a_token_or_a_choice(model, host):
    with pytest.raises(KyaraError, match="--token"):
        create_app(model, host=host)
    assert TestClient(create_app(model, host=host, token=TOKEN)).get("/api/health").json()["writes"] == "token"
    opened = create_app(model, host=host, allow_anonymous_writes=True)
    assert TestClient(opened).get("/api/health").json()["writes"] == "open"


def test_serve_options_for_tokens_and_exposure(model, crop, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **options: calls.append(application))
    refused = runner.invoke(cli, ["serve", "--model", str(model), "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "--token" in refused.output and not calls

    result = runner.invoke(cli, ["serve", "--model", str(model), "--host", "0.0.0.0"], env={"KYARA_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    client = TestClient(calls.pop())
    assert client.delete("/api/characters/gura").status_code == 401

    for flag, writes in (("--read-only", "read-only"), ("--allow-anonymous-writes", "open")):
        arguments = ["serve", "--model", str(model), "--host", "0.0.0.0", flag]
        result = runner.invoke(cli, arguments, env={"KYARA_TOKEN": ""})
        assert result.exit_code == 0, result.output
        assert TestClient(calls.pop()).get("/api/health").json()["writes"] == writes


def test_names_are_cleaned_alike_for_enroll_and_remove(model, crop):
    client = TestClient(create_app(model))
    for enrolled, removed, name in (
        ("%20Bob%20", "%20Bob%20", "Bob"),
        ("Bob", "Bob%09%20", "Bob"),  # a trailing tab is whitespace, stripped like the space
        ("Ame%CC%81lie", "Am%C3%A9lie", "Amélie"),  # decomposed, then composed
        ("Am%C3%A9lie", "%20Ame%CC%81lie", "Amélie"),
    ):
        response = client.post(f"/api/characters/{enrolled}/images", content=crop)
        assert response.status_code == 201 and response.json()["name"] == name, response.text
        response = client.delete(f"/api/characters/{removed}")
        assert response.status_code == 200 and response.json()["name"] == name, (removed, response.text)
        assert name not in load_bundle(model).all_labels()


def test_a_trained_name_is_removed_by_its_cleaned_form(model):
    bundle = load_bundle(model)
    bundle.labels[0] = " Spaced Name "
    from kyara.bundle import save_bundle

    save_bundle(bundle, model)
    client = TestClient(create_app(model))
    response = client.delete("/api/characters/Spaced%20Name")
    assert response.status_code == 200 and response.json()["name"] == " Spaced Name "
    assert " Spaced Name " not in load_bundle(model).labels


@pytest.mark.parametrize("name", ["%ff%fe", "%80%81", "Bob%ff", "%C3%28", "%ED%A0%80"])
def test_names_that_are_not_utf8_are_refused(model, crop, name):
    client = TestClient(create_app(model))
    before = model.read_bytes()
    for response in (
        client.post(f"/api/characters/{name}/images", content=crop),
        client.delete(f"/api/characters/{name}"),
    ):
        assert response.status_code == 400 and "UTF-8" in response.json()["error"], response.text
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    "address", ["/api/%63haracters/foo/images", "/api%2Fcharacters/foo/images", "/api/characters/foo/%69mages"]
)
def test_an_address_spelled_in_escapes_is_refused_not_misread(model, crop, address):
    """The route matches the decoded address; the name must not be read from another segment
    (these enrolled 'rs/foo' and 'foo/images')."""
    client = TestClient(create_app(model))
    before = model.read_bytes()
    response = client.post(address, content=crop)
    assert response.status_code == 400 and "/api/characters/NAME" in response.json()["error"], response.text
    response = client.delete(address.removesuffix("/images").removesuffix("/%69mages"))
    assert response.status_code in (400, 404), response.text
    assert model.read_bytes() == before


@pytest.mark.parametrize("name", ["a%E2%80%A8b", "a%E2%80%A9b", "a%0Ab", "a%0Db"])
def test_line_separators_are_refused_in_names(model, crop, name):
    """As names, not as addresses: a line feed made the route not match (404)."""
    client = TestClient(create_app(model))
    for response in (
        client.post(f"/api/characters/{name}/images", content=crop),
        client.delete(f"/api/characters/{name}"),
    ):
        assert response.status_code == 422 and "printable" in response.json()["error"], response.text


def test_junk_pictures_are_not_enrolled_and_corrupt_ones_are_400(model, crop):
    client = TestClient(create_app(model))
    before = model.read_bytes()
    tiny = png(Image.new("RGB", (1, 1), (128, 128, 128)))
    response = client.post("/api/characters/junk/images", content=tiny)
    assert response.status_code == 422 and "no face found" in response.json()["error"], response.text
    response = client.post("/api/characters/junk/images", content=crop[: len(crop) // 2])
    assert response.status_code == 400 and "junk" in response.json()["error"], response.text
    assert model.read_bytes() == before


def test_explain_finds_a_label_by_its_cleaned_form(model, crop):
    client = TestClient(create_app(model))
    assert client.post("/api/characters/Ame%CC%81lie/images", content=crop).status_code == 201
    for label in ("Ame%CC%81lie", "%20Am%C3%A9lie%20"):
        response = client.post(f"/api/explain?label={label}", content=crop)
        assert response.status_code == 200, response.text
        assert response.json()["faces"][0]["label"] == "Amélie"


def no_room(*_):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_507_and_changes_nothing(model, crop, monkeypatch):
    client = TestClient(create_app(model))
    assert client.post("/api/characters/Aoi/images", content=crop).status_code == 201
    before = model.read_bytes()
    monkeypatch.setattr(os, "fsync", no_room)
    for response in (
        client.post("/api/characters/Rin/images", content=crop),
        client.delete("/api/characters/Aoi"),
    ):
        assert response.status_code == 507 and response.json()["status"] == 507, response.text
        assert "no room left" in response.json()["error"]
    assert model.read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == [".model.kyara.lock", "model.kyara"]
    listed = [entry["name"] for entry in client.get("/api/characters").json()]
    assert "Aoi" in listed and "Rin" not in listed
    monkeypatch.setattr(os, "fsync", lambda _: None)
    assert client.delete("/api/characters/Aoi").status_code == 200


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line_and_status_2_for_kyara_enroll(model, crop, tmp_path, monkeypatch, code):
    picture = tmp_path / "aoi.png"
    picture.write_bytes(crop)
    before = model.read_bytes()

    def full(*_):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)
    result = runner.invoke(cli, ["enroll", "Aoi", str(picture), "--model", str(model)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "no room left" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert model.read_bytes() == before


def test_storage_error_is_still_an_os_error():
    error = StorageError(errno.ENOSPC, "no room left")
    assert isinstance(error, OSError) and isinstance(error, KyaraError) and str(error) == "no room left"
