"""Build the shipped 8-bit networks: the face detector and the default model's embedder in integers.

    python tools/quantize.py            # kyara/models/detector-int8.onnx, and embedder-int8.onnx into default.kyara
    python tools/quantize.py --what embedder --model mine.kyara --pictures my-illustrations/   # one's own model

ONNX Runtime static quantization: weights per channel in signed integers, activations in unsigned
8 bits (QDQ format), ranges calibrated on what each network sees at run time: 64 training
pictures of the detector (tools/build_data.py's illustrations) scaled as `kyara.detection` scales
them, and the faces `kyara.cut` cuts from those pictures for the embedder. Weights keep 7 bits
(ONNX Runtime's `reduce_range`): on x86 CPUs without VNNI the 16-bit sums of products of 8-bit
values can saturate, and the shipped files must be right everywhere. `--full-range` keeps all 8
bits (closer to float on VNNI CPUs; docs/detection.md "Experiments"). The bundle keeps its float
members unchanged, so indexes made with them stay valid. `kyara.runtime` says how they are run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from kyara.bundle import atomic_write_bytes, default_model_path, load_bundle, save_bundle
from kyara.detection import CNN_MODELS, CnnDetector, network_input
from kyara.imageio import list_images, load_image
from kyara.pipeline import Recognizer
from kyara.runtime import FLOAT32, INT8

CALIBRATION_PICTURES = 64
EMBEDDER_BATCH = 16


class Inputs(CalibrationDataReader):
    """Network inputs, one feed at a time, under the network's input name."""

    def __init__(self, name: str, inputs: Iterator[np.ndarray]) -> None:
        self._feeds = ({name: array} for array in inputs)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantized(model: bytes, calibration: Callable[[str], Inputs], full_range: bool) -> bytes:
    """`model` in 8-bit integers, calibrated on `calibration(input name)`, its `kyara.*` settings kept."""
    source = onnx.load_from_string(model)
    with tempfile.TemporaryDirectory() as folder:
        original, prepared, out = (Path(folder) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        original.write_bytes(model)
        quant_pre_process(str(original), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            calibration(source.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not full_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(out))
    del proto.metadata_props[:]
    proto.metadata_props.extend(source.metadata_props)
    return proto.SerializeToString()


def detector_inputs(pictures: list[Image.Image], side: int) -> Callable[[str], Inputs]:
    return lambda name: Inputs(name, (network_input(picture, side)[0] for picture in pictures))


def embedder_inputs(pictures: list[Image.Image], recognizer: Recognizer) -> Callable[[str], Inputs]:
    """The faces recognition cuts from `pictures`, in batches as the embedder takes them."""
    crops = [cut.pixels for picture in pictures for cut in recognizer.cuts_to_name(picture)]
    batches = [crops[i : i + EMBEDDER_BATCH] for i in range(0, len(crops), EMBEDDER_BATCH)]
    return lambda name: Inputs(name, (recognizer.embedder.to_input(batch) for batch in batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("both", "detector", "embedder"), default="both")
    parser.add_argument("--detector", type=Path, default=CNN_MODELS[FLOAT32])
    parser.add_argument("--detector-out", type=Path, default=CNN_MODELS[INT8])
    parser.add_argument("--model", type=Path, default=default_model_path(), help="the bundle given an 8-bit embedder")
    parser.add_argument("--pictures", type=Path, default=Path("build/data/illustrations/train"))
    parser.add_argument("--full-range", action="store_true", help="8-bit weights (right on VNNI CPUs only, see above)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = list_images(args.pictures)
    random.Random(args.seed).shuffle(paths)
    pictures = [load_image(path) for path in paths[:CALIBRATION_PICTURES]]

    detector = CnnDetector(model=args.detector)
    if args.what in ("both", "detector"):
        calibration = detector_inputs(pictures, detector.input_side)
        atomic_write_bytes(args.detector_out, quantized(detector.weights, calibration, args.full_range))
        print(f"wrote {args.detector_out} ({args.detector_out.stat().st_size / 1e6:.1f} MB)")
    if args.what in ("both", "embedder"):
        add_int8_embedder(args.model, pictures, detector, args.full_range)


def add_int8_embedder(model: Path, pictures: list[Image.Image], detector: CnnDetector, full_range: bool) -> None:
    bundle = load_bundle(model)
    recognizer = Recognizer(bundle, detector)
    bundle.onnx_int8 = quantized(bundle.onnx, embedder_inputs(pictures, recognizer), full_range)
    save_bundle(bundle, model)
    print(f"wrote {model}: its embedder in 8 bits, {len(bundle.onnx_int8) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
