"""INT8 exports of cxr's ONNX models, for `--precision int8|auto` (ONNX Runtime, CPU).

    python python/quantise_onnx.py MODELS_DIR [--data DATA_DIR] [--cxr CXR] [--calibration N]

For the segmenter and the classifier in MODELS_DIR (their FP32 exports `NAME.onnx`, made by
`python/export_onnx.py`), writes `NAME.int8.onnx`: static INT8 quantisation in ONNX Runtime's QDQ
format (weights per output channel, signed; activations unsigned), its activation ranges
calibrated on N radiographs (default 64) taken evenly from the shared data's manifests. The
calibration inputs are made by cxr itself (`cxr segment --inputs-out`), so they are exactly what
the models see.

Then every image of those manifests is run through cxr twice, `--precision fp32` and
`--precision int8` (the same binary, the same decoding and preprocessing): the INT8 models are
kept only if every lung mask has a Dice of at least 0.995 against the FP32 mask and every
P(covid) lies within 0.01 of the FP32 one. The segmenter is checked first (INT8 segmenter, FP32
classifier), then the classifier (on the masks of whichever segmenter export was kept); a model
whose INT8 file breaks a bound is refused (its file deleted, the images that broke which bound
printed) and runs FP32. A kept file records its
check in its metadata (`cxr.precision_check`); `--precision auto` uses only files that carry it.
"""

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ["cxr/manifest.csv", "jsrt/manifest.csv", "lungseg/manifest.csv", "nih-pneumonia/manifest.csv"]
MIN_DICE = 0.995
MAX_PROBABILITY_CHANGE = 0.01
WEIGHTS_KEY = "cxr.weights_sha256"
CHECK_KEY = "cxr.precision_check"


def shared_images(data):
    """Every image path of the shared manifests, in manifest order, without repeats."""
    paths = []
    for name in MANIFESTS:
        manifest = data / name
        if not manifest.exists():
            continue
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                relative = row.get("path") or row.get("image")
                # Relative to the manifest's folder, or (older manifests) to the data folder.
                path = manifest.parent / relative
                paths.append(str((path if path.exists() else data / relative).resolve()))
    return list(dict.fromkeys(paths))


def run_cxr(cxr, args, models, precision):
    """Runs `cxr ARGS --models MODELS --precision P`; its stdout's JSON lines."""
    command = [str(cxr), *args, "--models", str(models), "--precision", precision, "--threads", "2", "-q"]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    # Exit status 1 with results: some images were refused (each said why on stderr).
    if done.returncode != 0 and not (done.returncode == 1 and lines):
        raise SystemExit(f"{' '.join(command[:3])} ... failed:\n{done.stderr[-2000:]}")
    return lines


class Inputs(CalibrationDataReader):
    """The saved network inputs of one model, one batch of one at a time."""

    def __init__(self, files):
        self.files = iter(files)

    def get_next(self):
        path = next(self.files, None)
        return None if path is None else {"input": np.load(path)[None, None].astype(np.float32)}


def quantise(fp32, inputs, target):
    """Writes the INT8 twin of `fp32` to `target`, calibrated on the `.npy` files `inputs`."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Inputs(inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    source = onnx.load(str(fp32))
    model = onnx.load(str(target))
    recorded = {p.key: p.value for p in source.metadata_props}
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = WEIGHTS_KEY, recorded[WEIGHTS_KEY]
    onnx.save(model, str(target))


def dice(a, b):
    a, b = a >= 128, b >= 128
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


def masks_of(cxr, models, images, precision, out):
    """`cxr segment` of every image: its mask file, by image."""
    return {r["file"]: r["mask"] for r in run_cxr(cxr, ["segment", "--out", str(out), *images], models, precision)}


def probabilities_of(cxr, models, images, precision):
    """`cxr classify` of every image: P(covid), by image (refused images are missing)."""
    return {r["file"]: r["probabilities"]["covid"] for r in run_cxr(cxr, ["classify", *images], models, precision)}


def compare_masks(reference, candidate):
    """The worst Dice of the candidate masks against the reference ones, and the failures."""
    from PIL import Image

    worst, broken = 1.0, []
    for image, mask in reference.items():
        if image not in candidate:
            broken.append(f"{image}: segmented at one precision only")
            continue
        d = dice(np.asarray(Image.open(mask)), np.asarray(Image.open(candidate[image])))
        worst = min(worst, d)
        if d < MIN_DICE:
            broken.append(f"{image}: mask Dice {d:.4f} < {MIN_DICE}")
    return worst, broken


def compare_probabilities(reference, candidate):
    """The largest change of P(covid) from the reference, and the failures."""
    worst, broken = 0.0, []
    for image in sorted(set(reference) | set(candidate)):
        if image not in reference or image not in candidate:
            broken.append(f"{image}: refused at one precision only")
            continue
        change = abs(reference[image] - candidate[image])
        worst = max(worst, change)
        if change > MAX_PROBABILITY_CHANGE:
            broken.append(f"{image}: P(covid) {reference[image]:.4f} -> {candidate[image]:.4f}")
    return worst, broken


def stamp(target, summary):
    """Records the passed check in the file's metadata."""
    model = onnx.load(str(target))
    entry = model.metadata_props.add()
    entry.key, entry.value = CHECK_KEY, summary
    onnx.save(model, str(target))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CXR_DATA", ROOT.parent / "shared/data")))
    parser.add_argument("--cxr", type=Path, default=ROOT / "target/release/cxr")
    parser.add_argument("--calibration", type=int, default=64)
    args = parser.parse_args()

    images = shared_images(args.data)
    if not images:
        raise SystemExit(f"{args.data}: no manifests with images ({', '.join(MANIFESTS)})")
    step = max(1, len(images) // args.calibration)
    calibration = images[::step][: args.calibration]
    targets = {name: args.models / f"{name}.int8.onnx" for name in ["segmenter", "classifier"]}
    for target in targets.values():
        target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [str(args.cxr), "segment", "--out", str(work / "masks"), "--inputs-out", str(work / "inputs"),
             *calibration, "--models", str(args.models), "--precision", "fp32", "-q"],
            check=True, stdout=subprocess.DEVNULL)
        candidates = {}
        for name, target in targets.items():
            inputs = sorted((work / "inputs").glob(f"*.{name}.npy"))
            candidates[name] = work / f"{name}.int8.onnx"
            quantise(args.models / f"{name}.onnx", inputs, candidates[name])
            print(f"{name}: INT8 candidate calibrated on {len(inputs)} radiographs", file=sys.stderr)
        # FP32, then the INT8 segmenter alone (the classifier sees its masks), then both.
        print(f"checking against FP32 on {len(images)} shared radiographs", file=sys.stderr)
        masks = masks_of(args.cxr, args.models, images, "fp32", work / "fp32")
        p_fp32 = probabilities_of(args.cxr, args.models, images, "fp32")
        results = {}
        shutil.copy(candidates["segmenter"], targets["segmenter"])
        dice_worst, broken = compare_masks(masks, masks_of(args.cxr, args.models, images, "int8", work / "int8"))
        change, broken_p = compare_probabilities(p_fp32, probabilities_of(args.cxr, args.models, images, "int8"))
        broken += broken_p
        if broken:
            targets["segmenter"].unlink()
            report_refusal("segmenter (it runs FP32)", broken)
        else:
            results["segmenter"] = (dice_worst, change)
        # The classifier on the masks of whichever segmenter export is kept.
        shutil.copy(candidates["classifier"], targets["classifier"])
        change_both, broken = compare_probabilities(p_fp32, probabilities_of(args.cxr, args.models, images, "int8"))
        if broken:
            targets["classifier"].unlink()
            report_refusal("classifier (it runs FP32)", broken)
        else:
            results["classifier"] = (dice_worst if "segmenter" in results else 1.0, change_both)
    checked = len(p_fp32)
    for name, (worst_dice, worst_change) in results.items():
        summary = (f"against FP32 on {checked} classified shared radiographs: mask Dice >= {MIN_DICE} "
                   f"(worst {worst_dice:.4f}), |P(covid) change| <= {MAX_PROBABILITY_CHANGE} "
                   f"(worst {worst_change:.4f})"
                   + (f", with the {'INT8' if 'segmenter' in results else 'FP32'} segmenter" if name == "classifier" else ""))
        stamp(targets[name], summary)
        print(f"{targets[name]}: kept, {summary}", file=sys.stderr)
    print(json.dumps({name: {"checked_images": checked, "worst_mask_dice": round(d, 5),
                             "worst_probability_change": round(c, 5)} for name, (d, c) in results.items()}))


def report_refusal(what, broken):
    print(f"INT8 {what} refused:\n  " + "\n  ".join(broken[:20]) +
          (f"\n  ... and {len(broken) - 20} more" if len(broken) > 20 else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
