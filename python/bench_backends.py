"""The Python side of `cargo bench -p cxr-benches --bench backends`: PyTorch eager and ONNX
Runtime timed on the very inputs the Rust side times, driven round by round by the benchmark.

    python python/bench_backends.py MODELS_DIR INPUTS.safetensors IMAGE.png --threads N

INPUTS holds `classifier` [1, 1, 224, 224] (cxr's own preprocessing of IMAGE); the U-Net's
input is IMAGE resized to the side MODELS_DIR's segmenter declares and standardised (the
benchmark may give this side other models than its Rust side: today's, say, to measure against). The script prints `ready` once both runtimes are loaded, then answers
each line `CONTENDER MEASURE ITERATIONS` read from stdin with the seconds those iterations took,
so criterion (in Rust) measures both languages the same way, in the same command:

- CONTENDER: `pytorch` (eager, under torch.inference_mode()) or `onnxruntime` (the Python API);
- MEASURE: `classifier` (one forward), `unet` (one forward), `forward1000` (1000 classifier
  forwards in batches of 100: the model's share of LIME with 1000 samples) or `end_to_end`
  (decode IMAGE with Pillow, resize and standardise for the U-Net, segment, crop the lungs'
  box, resize and standardise for the classifier, classify: a plain Python pipeline of the
  same shape as cxr's, not a copy of every preprocessing detail).

Both runtimes use N intra-op threads (and one inter-op thread), as cxr does.
"""

import argparse
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxr_models import load_classifier, load_segmenter  # noqa: E402

LIME_SAMPLES, LIME_BATCH = 1000, 100


def standardise(x):
    return (x - x.mean()) / (x.std() + 1e-6)


class Contender:
    """One runtime's forward passes of both networks, on numpy float32 arrays."""

    def __init__(self, segmenter, classifier):
        self.segmenter, self.classifier = segmenter, classifier

    def end_to_end(self, png_bytes, side):
        gray = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("F"), dtype=np.float32)
        small = np.asarray(Image.fromarray(gray).resize((side, side), Image.BILINEAR))
        lungs = self.segmenter(standardise(small)[None, None].astype(np.float32))[0, 0] > 0
        ys, xs = np.nonzero(lungs)
        h, w = gray.shape
        if len(xs):
            box = (xs.min() * w // side, ys.min() * h // side, (xs.max() + 1) * w // side,
                   (ys.max() + 1) * h // side)
        else:
            box = (0, 0, w, h)
        crop = Image.fromarray(gray).crop(box).resize((224, 224), Image.BILINEAR)
        x = standardise(np.asarray(crop, dtype=np.float32))[None, None]
        return self.classifier(x.astype(np.float32))


def pytorch(models_dir):
    unet, _ = load_segmenter(models_dir)
    net, _ = load_classifier(models_dir)

    def forward(model):
        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return run

    return Contender(forward(unet), forward(net))


def onnxruntime_sessions(models_dir, threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def forward(name):
        session = onnxruntime.InferenceSession(
            str(Path(models_dir) / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        return lambda x: session.run(["logits"], {"input": x})[0]

    return Contender(forward("segmenter"), forward("classifier"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models_dir")
    parser.add_argument("inputs")
    parser.add_argument("image")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    inputs = {k: v.numpy() for k, v in load_file(args.inputs).items()}
    cls_input = inputs["classifier"]
    batch = np.repeat(cls_input, LIME_BATCH, axis=0)
    png = Path(args.image).read_bytes()
    side = json.loads((Path(args.models_dir) / "segmenter.json").read_text())["input_side"]
    gray = np.asarray(Image.open(args.image).convert("F"), dtype=np.float32)
    small = np.asarray(Image.fromarray(gray).resize((side, side), Image.BILINEAR))
    seg_input = standardise(small)[None, None].astype(np.float32)
    contenders = {
        "pytorch": pytorch(args.models_dir),
        "onnxruntime": onnxruntime_sessions(args.models_dir, args.threads),
    }
    measures = {
        "classifier": lambda c: c.classifier(cls_input),
        "unet": lambda c: c.segmenter(seg_input),
        "forward1000": lambda c: [c.classifier(batch) for _ in range(LIME_SAMPLES // LIME_BATCH)],
        "end_to_end": lambda c: c.end_to_end(png, side),
    }
    for contender in contenders.values():  # one warm-up pass of everything
        for measure in measures.values():
            measure(contender)
    print("ready", flush=True)
    for line in sys.stdin:
        name, measure, iterations = line.split()
        contender, run = contenders[name], measures[measure]
        start = time.perf_counter()
        for _ in range(int(iterations)):
            run(contender)
        print(f"{time.perf_counter() - start:.9f}", flush=True)


if __name__ == "__main__":
    main()
