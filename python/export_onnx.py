"""Exports cxr's native models to ONNX, for the ONNX Runtime backend (`--backend onnx|auto`).

    python python/export_onnx.py MODELS_DIR [OUT_DIR]

`cxr train` runs it on the folder it wrote. For each of `segmenter` and `classifier` present in
MODELS_DIR (their JSON + safetensors, as `cxr train` writes them), loads the PyTorch twin (cxr_models.py), exports it to OUT_DIR/NAME.onnx (OUT_DIR
defaults to MODELS_DIR) with a free batch dimension, and checks the file with ONNX Runtime against
the twin on seeded random inputs, printing the largest absolute difference; a difference above
1e-4 is an error and no file is left behind. cxr's tests check the ONNX forward against the
native libtorch forward (crates/core/tests/onnx.rs).

The graphs:
- segmenter: `input` [N, 1, 256, 256] -> `logits` [N, 1, 256, 256] (lung logits);
- classifier: `input` [N, 1, 224, 224] -> `logits` [N, classes] and `features` [N, C], the last
  feature map averaged over space (what the familiarity score is computed on).

Each file records the SHA-256 of the weights it was made from (metadata `cxr.weights_sha256`), so
cxr refuses an ONNX file left over from other weights (after a retraining, say).
"""

import hashlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxr_models import load_classifier, load_segmenter  # noqa: E402

OPSET = 17
TOLERANCE = 1e-4


class ClassifierGraph(nn.Module):
    """The classifier with its pooled features as a second output."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net.features(x)
        pooled = features.mean(dim=(2, 3))
        return self.net.fc(pooled), pooled


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(module, side, outputs, weights, target):
    """Exports `module` to `target` and returns the largest difference ORT vs the twin."""
    torch.manual_seed(0)
    example = torch.randn(2, 1, side, side)
    partial = target.with_suffix(".onnx.partial")
    torch.onnx.export(
        module,
        (example,),
        str(partial),
        dynamo=False,  # the TorchScript-based exporter: no onnxscript needed
        opset_version=OPSET,
        input_names=["input"],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]},
    )
    model = onnx.load(str(partial))
    entry = model.metadata_props.add()
    entry.key, entry.value = "cxr.weights_sha256", sha256(weights)
    onnx.checker.check_model(model)
    onnx.save(model, str(partial))

    session = onnxruntime.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
    probe = torch.randn(3, 1, side, side)
    with torch.no_grad():
        expected = module(probe)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {"input": probe.numpy()})
    diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    if diff > TOLERANCE:
        partial.unlink()
        raise SystemExit(f"{target}: ONNX Runtime differs from PyTorch by {diff:.3g} > {TOLERANCE}")
    os.replace(partial, target)
    return diff


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    models_dir = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else models_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, chosen on purpose
    graphs = {
        "segmenter": lambda: (load_segmenter(models_dir), lambda net: net, ["logits"]),
        "classifier": lambda: (
            load_classifier(models_dir),
            lambda net: ClassifierGraph(net).eval(),
            ["logits", "features"],
        ),
    }
    for name, load in graphs.items():
        weights = models_dir / f"{name}.safetensors"
        if not weights.exists():
            continue
        (net, meta), graph, outputs = load()
        target = out / f"{name}.onnx"
        diff = export(graph(net), meta["input_side"], outputs, weights, target)
        print(f"{target}: max |ONNX Runtime - PyTorch| = {diff:.3g}")


if __name__ == "__main__":
    main()
