"""Opening networks (kyara.runtime): the arguments every session takes are checked in one place."""

from __future__ import annotations

import pytest

from kyara.detection import CnnDetector
from kyara.errors import KyaraError
from kyara.landmarks import Landmarker
from kyara.pipeline import Recognizer


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_every_network_refuses_threads_that_are_not_a_whole_number_of_at_least_one(threads):
    for make in (Landmarker, CnnDetector, Recognizer):
        with pytest.raises(KyaraError, match="must be a whole number of at least 1"):
            make(threads=threads)
