"""PyTorch twins of cxr's native tch networks, for side-by-side checks and ONNX export.

The Rust classifier (crates/core/src/models/resnet.rs) follows torchvision's ResNet layout and
parameter names, and the U-Net (crates/core/src/models/unet.rs) uses the same names here, so
their safetensors files load directly:

    from cxr_models import load_classifier, load_segmenter
    model, meta = load_classifier("models")          # eval mode, on the CPU
    logits = model(x)                                # x: [N, 1, 224, 224], cxr's preprocessing
    unet, meta = load_segmenter("models")
    lung_logits = unet(x)                            # x: [N, 1, 256, 256] -> [N, 1, 256, 256]

Only `num_batches_tracked` buffers (which tch does not keep) are absent from the files.
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


class DoubleConv(nn.Module):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)))


class UpStep(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.upconv = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.upconv(x)], 1))


class UNet(nn.Module):
    """cxr's U-Net: `depth` 2x down-steps from `base` channels, skips by concatenation."""

    def __init__(self, in_channels=1, base=16, depth=4):
        super().__init__()
        self.depth = depth
        cin = in_channels
        for level in range(depth):
            setattr(self, f"down{level}", DoubleConv(cin, base << level))
            cin = base << level
        self.bottleneck = DoubleConv(cin, base << depth)
        for level in range(depth):
            setattr(self, f"up{level}", UpStep(base << (level + 1), base << level))
        self.head = nn.Conv2d(base, 1, 1)

    def forward(self, x):
        skips = []
        for level in range(self.depth):
            x = getattr(self, f"down{level}")(x)
            skips.append(x)
            x = torch.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            x = getattr(self, f"up{level}")(x, skips[level])
        return self.head(x)


def _load(model, models_dir, name):
    missing, unexpected = model.load_state_dict(
        load_file(str(Path(models_dir) / f"{name}.safetensors")), strict=False
    )
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    return model.eval()


def load_classifier(models_dir="models", name="classifier"):
    """The classifier in `models_dir`, in eval mode, and its metadata (classes, threshold...)."""
    meta = json.loads((Path(models_dir) / f"{name}.json").read_text())
    arch = meta["architecture"]
    model = ResNet(arch["in_channels"], arch["widths"], arch["blocks"], arch["num_classes"])
    return _load(model, models_dir, name), meta


def load_segmenter(models_dir="models", name="segmenter"):
    """The U-Net segmenter in `models_dir`, in eval mode, and its metadata."""
    meta = json.loads((Path(models_dir) / f"{name}.json").read_text())
    arch = meta["architecture"]
    model = UNet(arch["in_channels"], arch["base"], arch["depth"])
    return _load(model, models_dir, name), meta
