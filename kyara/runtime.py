"""Opening ONNX models: the one place that decides threads, providers, precision and how a bad model is reported.

Every network kyara runs (the detector, a bundle's embedder) is opened by `open_session`, so both
take the caller's thread count and fail with the same clear `ModelError`. Settings that travel with
the weights are read from the model's metadata by `model_settings`.

Each shipped network also comes in 8-bit integers (`PRECISIONS`; made by tools/quantize.py): the
detector about 1.6 times as fast on this project's 2-core machine, `kyara index` about 1.6 times the
pictures per second, with faces and embeddings slightly different from the float ones
(docs/collection.md). Weights keep 7 of their 8 bits, so the sums of products cannot saturate on
x86 CPUs without VNNI, where ONNX Runtime adds them in 16 bits.
"""

from __future__ import annotations

import os

import onnxruntime as ort

from kyara.errors import KyaraError, ModelError, count

FLOAT32, INT8 = "float32", "int8"
PRECISIONS = (FLOAT32, INT8)
DEFAULT_PRECISION = FLOAT32


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise KyaraError(f"unknown precision {precision!r}; available: {', '.join(PRECISIONS)}")
    return precision


def default_threads() -> int:
    """One inference thread per core, at most 4: more rarely helps a model this small."""
    return max(1, min(4, os.cpu_count() or 1))


def open_session(
    model: bytes, what: str, threads: int | None = None, varying_shapes: bool = False
) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU; `what` names the model in errors ("the detector").
    `varying_shapes`: inputs change shape from call to call (the detector follows each picture's
    aspect ratio), so no memory pattern, which is planned for one shape. The memory arena stays:
    it keeps the largest call's memory, which the detector's bounded input side keeps to tens of
    MB, whereas without it every call mallocs blocks of a size that follows the picture, and glibc
    let small objects made between calls pin them: detecting and cutting 300 face crops of varied
    sizes grew the process by 1.2 GB (with the arena: +100 MB, and 10 % faster). Threads do not
    spin-wait between runs (below)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads() if threads is None else count(threads, f"threads for {what}")
    options.inter_op_num_threads = 1
    # Each session's threads otherwise spin for a while after every run, taking the cores from the
    # next network of the pipeline (detector, then embedder): recognizing a 768 px illustration on
    # 2 cores took 50 ms with spinning and 28 ms without (docs/detection.md, Speed).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if varying_shapes:
        options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
        raise ModelError(f"{what} cannot be loaded: {exc}") from exc


def model_settings(session: ort.InferenceSession, prefix: str = "kyara.") -> dict[str, str]:
    """The `kyara.*` entries of the model's metadata, without the prefix."""
    stored = session.get_modelmeta().custom_metadata_map
    return {key.removeprefix(prefix): value for key, value in stored.items() if key.startswith(prefix)}
