from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METRICS = ROOT / "docs" / "default-model-metrics.json"


def data_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test cleanly where the data is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="session")
def face_crop_path() -> Path:
    return data_path("holoen-faces", "gura") / sorted(p.name for p in data_path("holoen-faces", "gura").iterdir())[0]


@pytest.fixture(scope="session")
def recognizer():
    from kyara.pipeline import Recognizer

    return Recognizer()


def held_out(key: str) -> list[Path]:
    """Files the default model never trained on, as listed by its build (`docs/...metrics.json`)."""
    data_path()
    if not METRICS.exists():
        pytest.skip(f"{METRICS} is not there (made by python -m kyara.train.default_model)")
    return [DATA / f for f in json.loads(METRICS.read_text())[key]]


@pytest.fixture(scope="session")
def held_out_files() -> list[Path]:
    return held_out("test_files")


def drawing_module():
    """docs/make_example.py draws characters we own, usable as test pictures."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example", ROOT / "docs" / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
