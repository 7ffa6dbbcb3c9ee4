"""Runs cxr's classifier in PyTorch on inputs saved by the Rust side and compares the logits.

    python python/check_classifier.py MODELS_DIR CASE.safetensors

CASE holds `input` ([N, 1, 224, 224], cxr's preprocessing) and `logits` (what tch computed).
Prints the largest absolute difference; exits 1 when it exceeds 1e-4.
"""

import sys

import torch
from safetensors.torch import load_file

from cxr_models import load_classifier


def main():
    models_dir, case_path = sys.argv[1], sys.argv[2]
    model, _ = load_classifier(models_dir)
    case = load_file(case_path)
    with torch.no_grad():
        logits = model(case["input"])
    diff = (logits - case["logits"]).abs().max().item()
    print(f"max |logit difference| = {diff:.3g}")
    sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main()
