"""A bounded fuzz through the server: 240 hostile requests, none answered 5xx or in plain
text. The generator is benchmarks/server_fuzz.py's (which runs 10,000 against a real server)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import warnings
from collections import Counter

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra")
from fastapi.testclient import TestClient

from kyara.admission import Limits
from kyara.bundle import default_model_path
from kyara.server import create_app
from tests.conftest import ROOT


def fuzz_module():
    spec = importlib.util.spec_from_file_location("server_fuzz", ROOT / "benchmarks" / "server_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_hostile_requests_get_no_5xx(tmp_path):
    fuzz = fuzz_module()
    model = tmp_path / "model.kyara"
    shutil.copy(default_model_path(), model)
    limits = Limits(max_body_bytes=2 * 1024 * 1024, max_pixels=4_000_000)
    client = TestClient(create_app(model, limits, token=fuzz.TOKEN))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about some odd modes it is asked to save
        cases = fuzz.hostile_cases(240, seed=15, large=False)
    # Large bodies, declared and chunked, over this server's 2 MiB limit.
    cases += [fuzz.Case("3 MiB body", content=bytes(3 << 20)), fuzz.Case("3 MiB chunked", content=bytes(3 << 20))]
    cases[-1].chunked = True
    # Every answer the server promises, whatever the generator drew: a type kyara does not read.
    cases.append(fuzz.Case("declared text", content=b"hello", headers={"content-type": "text/plain"}))
    outcomes = Counter()
    for case in cases:
        content = case.content
        if case.chunked:
            content = (case.content[i : i + (1 << 20)] for i in range(0, len(case.content), 1 << 20))
        response = client.request(case.method, case.path, content=content, files=case.files, headers=case.headers)
        assert response.status_code < 500, (case.kind, case.path, response.status_code, response.text[:200])
        if case.path.startswith("/api/"):
            assert response.headers["content-type"] == "application/json", (case.kind, response.text[:200])
            if response.status_code >= 400:
                assert response.json()["status"] == response.status_code
        outcomes[response.status_code] += 1
    assert {400, 401, 404, 413, 415, 422} <= set(outcomes), outcomes
