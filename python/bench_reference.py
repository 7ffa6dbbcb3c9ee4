"""The Python half of cxr's speed comparison: reference explainers on the same model and inputs.

    python python/bench_reference.py MODELS_DIR CASES.safetensors [--repeats 5] [--threads 2]

CASES is the file crates/explainers/tests/python_reference.rs writes (only `input` [N, 1, 224, 224]
and `target` [N] are used here). Times per image, the median over every image and repeat after one
warm-up run, of:

- forward_ms: the classifier's forward pass on one image, under torch.no_grad();
- grad_cam_ms: pytorch-grad-cam's GradCAM (target layer `layer4`) for the target class;
- lime_1000_ms: the `lime` package's LimeImageExplainer.explain_instance with 1000 samples in
  batches of 100, its default quickshift segmentation and hide_color=0, on the 224x224 input
  (grayscale replicated to three channels);
- forward_1000_batched_ms: 1000 forwards as 10 batches of 100 (the model's share of LIME), and
  lime_overhead_ms = lime_1000_ms - forward_1000_batched_ms (segmentation, building the perturbed
  images, the regression).

Prints one JSON object, with the load average before and after: time on an otherwise idle machine.
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxr_models import load_classifier  # noqa: E402

from lime import lime_image  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

LIME_SAMPLES = 1000
LIME_BATCH = 100


def per_image_ms(run, inputs, repeats):
    """Median milliseconds of `run(x, target)` over every input and repeat, after one warm-up.

    When `run` returns a number, that is its own measure of the time taken (in seconds).
    """
    x0, t0 = inputs[0]
    run(x0, t0)
    samples = []
    for _ in range(repeats):
        for x, target in inputs:
            start = time.perf_counter()
            own = run(x, target)
            seconds = own if own is not None else time.perf_counter() - start
            samples.append(seconds * 1e3)
    return statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir")
    parser.add_argument("cases")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    torch.set_num_threads(args.threads)
    model, _meta = load_classifier(args.models_dir)
    cases = load_file(str(args.cases))
    x = cases["input"].float().contiguous()
    targets = cases["target"].long()
    inputs = [(x[i : i + 1].clone(), int(targets[i])) for i in range(x.shape[0])]

    def forward(xi, _target):
        with torch.no_grad():
            model(xi)

    cam = GradCAM(model=model, target_layers=[model.layer4])

    def grad_cam(xi, target):
        cam(input_tensor=xi, targets=[ClassifierOutputTarget(target)])

    side = x.shape[-1]

    def classifier_fn(images):
        # images: [n, H, W, 3] (the grayscale input replicated); the model sees channel 0.
        batch = torch.from_numpy(np.ascontiguousarray(images[..., 0], dtype=np.float32))
        with torch.no_grad():
            return torch.softmax(model(batch.view(-1, 1, side, side)), dim=1).numpy()

    # lime 0.2.0.1 always wraps its sampling loop in a tqdm progress bar: keep stderr quiet.
    lime_image.tqdm = lambda iterable, *args, **kwargs: iterable
    explainer = lime_image.LimeImageExplainer()
    lime_segments = []

    def lime_1000(xi, target):
        image = np.repeat(xi[0, 0].numpy()[..., None], 3, axis=2)
        explanation = explainer.explain_instance(
            image,
            classifier_fn,
            labels=(target,),
            top_labels=None,
            hide_color=0,
            num_samples=LIME_SAMPLES,
            batch_size=LIME_BATCH,
            random_seed=0,
        )
        lime_segments.append(int(np.unique(explanation.segments).size))

    # The model's share of LIME: 1000 forwards in batches of 100, timed as 10 batches. It is
    # timed right after each LIME run, on the same image, so both see the same machine state.
    batches = LIME_SAMPLES // LIME_BATCH
    batched_ms = []

    def lime_then_batched(xi, target):
        start = time.perf_counter()
        lime_1000(xi, target)
        elapsed = time.perf_counter() - start
        batch = xi.expand(LIME_BATCH, -1, -1, -1).contiguous()
        start = time.perf_counter()
        for _ in range(batches):
            forward(batch, None)
        batched_ms.append((time.perf_counter() - start) * 1e3)
        return elapsed

    load_before = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forward_ms = per_image_ms(forward, inputs, args.repeats)
        grad_cam_ms = per_image_ms(grad_cam, inputs, args.repeats)
        lime_ms = per_image_ms(lime_then_batched, inputs, args.repeats)
    batched_ms = statistics.median(batched_ms[1:])  # the first belongs to the warm-up
    load_after = os.getloadavg()[0]

    result = {
        "forward_ms": round(forward_ms, 3),
        "grad_cam_ms": round(grad_cam_ms, 3),
        "lime_1000_ms": round(lime_ms, 1),
        "forward_1000_batched_ms": round(batched_ms, 1),
        "lime_overhead_ms": round(lime_ms - batched_ms, 1),
        "lime_segments": int(statistics.median(lime_segments)),
        "images": len(inputs),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        # 1-minute load average before and after: above `threads` means something else was
        # running, and with 2 threads on 2 cores libtorch's timings then degrade badly.
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
