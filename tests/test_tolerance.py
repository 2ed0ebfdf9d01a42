"""The tolerant comparison the tests use for results of two runs must still tell different results apart."""

from __future__ import annotations

import numpy as np

from kyara.index import IndexedFace
from tests.conftest import same_values


def face(label: str | None = "gura", confidence: float = 0.36992329, box=(1, 2, 3, 4)) -> IndexedFace:
    return IndexedFace(1, "a.png", box, 0.9, 0.0, False, label, confidence, 0.8)


def test_last_digits_differ_but_nothing_else_may():
    assert same_values([face()], [face(confidence=0.36992341)])  # two BLAS builds
    assert not same_values([face()], [face(confidence=0.371)])
    assert not same_values([face()], [face(label=None)])
    assert not same_values([face()], [face(box=(1, 2, 3, 5))])
    assert not same_values([face()], [face(), face()])
    vector = np.linspace(-1, 1, 8, dtype=np.float32)

    def stored(values):  # as the collection index stores embeddings
        return ("x", values.astype(np.float16).tobytes())

    assert same_values(stored(vector), stored(vector + 1e-4))
    assert not same_values(stored(vector), stored(vector + 1e-2))
    assert not same_values({"a": 1.0}, {"b": 1.0})
