"""Exports cxr's shipped classifier as a TorchScript model that cxr loads back: the worked
example of docs/bring-your-own-model.md, and a check that both backends agree.

    python python/export_torchscript.py MODELS_DIR OUT_DIR

Writes OUT_DIR/classifier.pt (scripted, with `features` and `head` methods beside `forward`)
and OUT_DIR/classifier.json (`"format": "torchscript"`, the classes, threshold, input style and
trust model copied from the native JSON). Prints the largest absolute logit difference between
the scripted module and the PyTorch twin on random inputs.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from cxr_models import load_classifier


class Exported(nn.Module):
    """The twin, split at its last feature map as cxr's gradient explainers need."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    @torch.jit.export
    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.net.fc(f.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main():
    models_dir, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    net, meta = load_classifier(models_dir)
    scripted = torch.jit.script(Exported(net).eval())
    torch.jit.save(scripted, str(out / "classifier.pt"))
    exported = {
        "format": "torchscript",
        "architecture": {"features": "features", "head": "head"},
        "input_side": meta["input_side"],
        "classes": meta["classes"],
        "threshold": meta["threshold"],
        "record": {"exported_from": str(Path(models_dir) / "classifier.safetensors")},
    }
    for key in ("input", "trust"):
        if key in meta:
            exported[key] = meta[key]
    # cxr refuses a module whose bytes are not the ones recorded here (a damaged or swapped file).
    exported["weights_sha256"] = hashlib.sha256((out / "classifier.pt").read_bytes()).hexdigest()
    (out / "classifier.json").write_text(json.dumps(exported) + "\n")
    torch.manual_seed(0)
    x = torch.randn(4, 1, 224, 224)
    with torch.no_grad():
        diff = (scripted(x) - net(x)).abs().max().item()
    print(f"max |logit difference| scripted vs twin = {diff:.3g}")


if __name__ == "__main__":
    main()
