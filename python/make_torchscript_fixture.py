"""Writes the tiny TorchScript classifiers the tests load (a few KB each, committed):

    python python/make_torchscript_fixture.py crates/core/tests/fixtures/torchscript

- `tiny-split.pt` + `.json`: a scripted module with `features(x)` (the last feature map) and
  `head(f)` (logits from it) besides `forward`, as "bring your own model" asks for gradient
  explainers (Grad-CAM) to work;
- `tiny-logits.pt` + `.json`: the same weights exported with `forward` only: plain logits, for
  which cxr offers the explainers that need no feature map (LIME, RISE, occlusion, IG).

The weights are not trained: a fixed seed makes them the same on every run, and the tests check
the plumbing (loading, shapes, gradients, the capability query, errors), never diagnoses. The
head is biased so that the two classes get clearly different probabilities on a bright image.
"""

import json
import sys
from pathlib import Path

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=4, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 2)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))

    @torch.jit.export
    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LogitsOnly(nn.Module):
    """The same network behind `forward` alone."""

    def __init__(self, inner: Tiny):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.head(self.inner.features(x))


def meta(split: bool) -> dict:
    return {
        "format": "torchscript",
        "architecture": {"features": "features", "head": "head"} if split else {},
        "input_side": 224,
        "classes": ["covid", "normal"],
        "threshold": 0.5,
        "record": {"note": "test fixture: untrained weights (python/make_torchscript_fixture.py)"},
    }


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    model = Tiny().eval()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.5, -0.5]))
    torch.jit.save(torch.jit.script(model), str(out / "tiny-split.pt"))
    torch.jit.save(torch.jit.script(LogitsOnly(model).eval()), str(out / "tiny-logits.pt"))
    for name, split in [("tiny-split", True), ("tiny-logits", False)]:
        (out / f"{name}.json").write_text(json.dumps(meta(split), indent=2) + "\n")
    x = torch.full((1, 1, 224, 224), 0.5)
    with torch.no_grad():
        print("logits on a uniform 0.5 image:", model(x).tolist())


if __name__ == "__main__":
    main()
