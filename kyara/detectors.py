"""Which face detector a name means (`--detector`): the one registry, above every detector module
(the face check cuts faces, so it sits above kyara.cut, which sits above kyara.detection)."""

from __future__ import annotations

from kyara.detection import AnimeFaceDetector, CnnDetector, Detector
from kyara.errors import KyaraError
from kyara.face_check import CheckedCnnDetector
from kyara.landmarks import with_landmarks
from kyara.runtime import DEFAULT_PRECISION

DETECTORS = {"animeface": AnimeFaceDetector, "cnn": CnnDetector, "cnn-checked": CheckedCnnDetector}
DEFAULT_DETECTOR = "cnn"


def get_detector(
    name: str = DEFAULT_DETECTOR, precision: str = DEFAULT_PRECISION, landmarks: bool = False, **options
) -> Detector:
    """The detector called `name`; `precision` is its networks' (animeface runs none). With
    `landmarks`, its faces carry landmarks and colours: animeface's own, kyara's landmark network's
    for the others (`kyara.landmarks`)."""
    if name not in DETECTORS:
        raise KyaraError(f"unknown detector {name!r}; available: {', '.join(DETECTORS)}")
    if name == AnimeFaceDetector.name:
        return AnimeFaceDetector(**options)
    detector = DETECTORS[name](precision=precision, **options)
    return with_landmarks(detector) if landmarks else detector
