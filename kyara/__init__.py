"""kyara: which anime character is in this picture?

import kyara
for face in kyara.recognize("party.png"):
    print(face.box, face.label, face.confidence, face.top_k)
"""

__version__ = "0.1.0"

from kyara.bundle import ModelBundle, load_bundle, save_bundle
from kyara.cluster import cluster_folder
from kyara.detection import DetectedFace
from kyara.errors import ImageError, ImageTooLargeError, KyaraError, ModelError
from kyara.explanation import Explanation, explain
from kyara.gallery import characters, enroll, forget
from kyara.imageio import load_image
from kyara.index import CollectionIndex
from kyara.pipeline import FaceResult, Recognizer, detect, recognize

__all__ = [
    "CollectionIndex",
    "DetectedFace",
    "Explanation",
    "FaceResult",
    "ImageError",
    "ImageTooLargeError",
    "KyaraError",
    "ModelBundle",
    "ModelError",
    "Recognizer",
    "__version__",
    "characters",
    "cluster_folder",
    "detect",
    "enroll",
    "explain",
    "forget",
    "load_bundle",
    "load_image",
    "recognize",
    "save_bundle",
]
