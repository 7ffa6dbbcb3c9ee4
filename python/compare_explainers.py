"""Side-by-side check of cxr's Rust explainers against the Python reference implementations.

    python python/compare_explainers.py MODELS_DIR CASES.safetensors

CASES (written by crates/explainers/tests/python_reference.rs) holds, for N preprocessed inputs:

    input     [N, 1, 224, 224] f32   the classifier inputs
    target    [N] i64                the class each explanation is for
    grad_cam  [N, 224, 224] f32      the Rust Grad-CAM heatmap (ReLU, bilinear upsampling, / max)
    ig        [N, 1, 224, 224] f32   the Rust Integrated Gradients raw attributions

For each case this runs pytorch-grad-cam's GradCAM on `model.layer4` and captum's
IntegratedGradients (zero baseline, 32 midpoint-Riemann steps) on the PyTorch twin of the shipped
classifier, and prints one JSON line per case and method with the Pearson correlation between the
two results. Grad-CAM maps are compared as pytorch-grad-cam returns them (ReLU, min-max scaled,
resized to the input): Pearson ignores the scaling. IG attributions are compared raw, flattened.

Exit status 0 when every correlation is at least --min-pearson (0.99), 1 otherwise.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxr_models import load_classifier  # noqa: E402

from captum.attr import IntegratedGradients  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

IG_STEPS = 32


def pearson(a, b):
    """Pearson correlation of two arrays, flattened, in float64.

    Two constant arrays count as matching (1.0); one constant and one not, as unrelated (0.0).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a = a - a.mean()
    b = b - b.mean()
    na, nb = np.sqrt((a * a).sum()), np.sqrt((b * b).sum())
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float((a * b).sum() / (na * nb))


def load_cases(path):
    cases = load_file(str(path))
    missing = [k for k in ("input", "target", "grad_cam", "ig") if k not in cases]
    if missing:
        raise SystemExit(f"{path}: missing tensors {missing}")
    x = cases["input"].float()
    n = x.shape[0]
    if x.dim() != 4 or x.shape[1] != 1:
        raise SystemExit(f"{path}: input must be [N, 1, H, W], got {list(x.shape)}")
    h, w = x.shape[2], x.shape[3]
    expected = {"target": (n,), "grad_cam": (n, h, w), "ig": (n, 1, h, w)}
    for key, shape in expected.items():
        if tuple(cases[key].shape) != shape:
            raise SystemExit(f"{path}: {key} must be {list(shape)}, got {list(cases[key].shape)}")
    return x, cases["target"].long(), cases["grad_cam"].float(), cases["ig"].float()


def reference_grad_cam(model, x, target):
    """pytorch-grad-cam's map for one input `[1, 1, H, W]`, as a numpy `[H, W]` array."""
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]


def reference_integrated_gradients(model, x, target):
    """captum's raw IG attributions for one input `[1, 1, H, W]`, same shape."""
    ig = IntegratedGradients(model)
    attributions = ig.attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=IG_STEPS, method="riemann_middle"
    )
    return attributions.detach()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir")
    parser.add_argument("cases")
    parser.add_argument("--min-pearson", type=float, default=0.99)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, _meta = load_classifier(args.models_dir)
    x, targets, rust_cams, rust_igs = load_cases(args.cases)

    failures = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone()
        target = int(targets[i])

        cam = reference_grad_cam(model, xi, target)
        r = pearson(cam, rust_cams[i].numpy())
        print(json.dumps({"case": i, "method": "grad-cam", "pearson": r}), flush=True)
        if not r >= args.min_pearson:
            failures.append(f"case {i} grad-cam: pearson {r:.6f} < {args.min_pearson}")

        attributions = reference_integrated_gradients(model, xi, target)
        r = pearson(attributions.numpy(), rust_igs[i].numpy())
        line = {
            "case": i,
            "method": "integrated-gradients",
            "pearson": r,
            "captum_sum": float(attributions.double().sum()),
            "rust_sum": float(rust_igs[i].double().sum()),
        }
        print(json.dumps(line), flush=True)
        if not r >= args.min_pearson:
            failures.append(f"case {i} integrated-gradients: pearson {r:.6f} < {args.min_pearson}")

    if failures:
        print("Rust explainers disagree with the Python references:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
