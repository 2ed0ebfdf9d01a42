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
        pytest.skip(f"{METRICS} is not there (made by python scripts/default_model.py)")
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


FLOAT_TOLERANCE = 1e-4
"""Floats of two runs agree to this much: BLAS kernels and ONNX Runtime builds differ in the last digits."""


def same_values(actual, expected, tolerance: float = FLOAT_TOLERANCE) -> bool:
    """Equal structures, exact for everything but floats, float arrays and float blobs (compared within `tolerance`).

    Nested tuples, lists, dicts and dataclasses are compared field by field; `bytes` of equal length
    are read as float16 vectors, as the collection index stores its embeddings.
    """
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(actual) and dataclasses.is_dataclass(expected):
        return type(actual) is type(expected) and same_values(
            dataclasses.asdict(actual), dataclasses.asdict(expected), tolerance
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same_values(actual[k], expected[k], tolerance) for k in actual)
    if isinstance(actual, list | tuple) and isinstance(expected, list | tuple):
        return len(actual) == len(expected) and all(same_values(a, e, tolerance) for a, e in zip(actual, expected))
    if isinstance(actual, float) or isinstance(expected, float):
        numbers = isinstance(actual, int | float) and isinstance(expected, int | float)
        return numbers and abs(actual - expected) <= tolerance
    if isinstance(actual, np.ndarray) or isinstance(expected, np.ndarray):
        return np.shape(actual) == np.shape(expected) and np.allclose(actual, expected, atol=tolerance, rtol=0)
    blobs = isinstance(actual, bytes) and isinstance(expected, bytes)
    if blobs and len(actual) == len(expected) > 0 == len(actual) % 2:
        # A last-digit difference may cross one float16 rounding step: 2**-10 of the value.
        halves = np.frombuffer(actual, np.float16).astype(np.float32), np.frombuffer(expected, np.float16)
        return np.allclose(*halves, atol=tolerance, rtol=2**-10)
    return actual == expected
