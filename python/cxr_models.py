"""PyTorch twins of cxr's native tch networks, for side-by-side checks.

The Rust classifier (crates/core/src/models/resnet.rs) follows torchvision's ResNet layout and
parameter names, so its safetensors file loads here directly:

    from cxr_models import load_classifier
    model, meta = load_classifier("models")          # eval mode, on the CPU
    logits = model(x)                                # x: [N, 1, 224, 224], cxr's preprocessing

Only `num_batches_tracked` buffers (which tch does not keep) are absent from the file.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + shortcut)


class ResNet(nn.Module):
    """torchvision's ResNet with configurable widths and input channels."""

    def __init__(self, in_channels=1, widths=(16, 32, 64, 128), blocks=(2, 2, 2, 2), num_classes=2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for stage, (cout, n) in enumerate(zip(widths, blocks)):
            layers = []
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def load_classifier(models_dir="models", name="classifier"):
    """The classifier in `models_dir`, in eval mode, and its metadata (classes, threshold...)."""
    models_dir = Path(models_dir)
    meta = json.loads((models_dir / f"{name}.json").read_text())
    arch = meta["architecture"]
    model = ResNet(arch["in_channels"], arch["widths"], arch["blocks"], arch["num_classes"])
    missing, unexpected = model.load_state_dict(
        load_file(str(models_dir / f"{name}.safetensors")), strict=False
    )
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    return model.eval(), meta
