"""Study: the face detector in 8-bit integers (ONNX Runtime static quantization), to weigh speed against faces.

    python tools/quantize_detector.py kyara/models/detector.onnx build/detector-int8.onnx
    python benchmarks/detection_benchmark.py --boxes benchmarks/detection_boxes_anime.json \
        --backends cnn int8=cnn@build/detector-int8.onnx

Weights per channel in signed 8 bits, activations in unsigned 8 bits (QDQ format), ranges calibrated
on 64 training pictures scaled as kyara.detection scales them. `--full-range` keeps all 8 bits of
the weights: closer to the float network on CPUs with VNNI (AVX512-VNNI, AVX-VNNI), but on x86
CPUs without it the products of unsigned and signed 8-bit values can saturate their 16-bit sums,
so the default keeps 7 bits (ONNX Runtime's `reduce_range`), which is safe everywhere.
Measured in docs/detection.md ("Experiments"); the shipped detector is not quantized.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from kyara.detection import CnnDetector, network_input
from kyara.imageio import list_images, load_image

CALIBRATION_PICTURES = 64


class TrainingPictures(CalibrationDataReader):
    """Network inputs made from training pictures by `kyara.detection.network_input`, at the
    detector's input side (the close-up pass's half size with a margin is not calibrated for)."""

    def __init__(self, pictures: list[Path], side: int) -> None:
        self._inputs: Iterator[dict] = ({"image": network_input(load_image(p), side)[0]} for p in pictures)

    def get_next(self) -> dict | None:
        return next(self._inputs, None)


def quantized(model: Path, pictures: list[Path], full_range: bool) -> bytes:
    """The detector in 8 bits, with the float file's `kyara.*` settings."""
    side = CnnDetector(model=model).input_side
    with tempfile.TemporaryDirectory() as folder:
        prepared, out = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(model), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            TrainingPictures(pictures, side),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not full_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(out))
    del proto.metadata_props[:]
    proto.metadata_props.extend(onnx.load(str(model)).metadata_props)
    return proto.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pictures", type=Path, default=Path("build/data/illustrations/train"))
    parser.add_argument("--full-range", action="store_true", help="8-bit weights (VNNI CPUs only, see above)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pictures = list_images(args.pictures)
    random.Random(args.seed).shuffle(pictures)
    args.out.write_bytes(quantized(args.model, pictures[:CALIBRATION_PICTURES], args.full_range))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
