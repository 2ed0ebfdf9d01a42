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


@pytest.fixture(scope="session")
def held_out_files() -> list[Path]:
    """Test-split images of the default model: it never trained on them."""
    files = json.loads(METRICS.read_text())["test_files"]
    return [DATA / f for f in files]
