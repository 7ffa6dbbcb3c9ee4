"""Floating-point operations of one forward pass of each model in MODELS_DIR (batch of one, at
the input side its JSON declares), counted by PyTorch's FlopCounterMode on the PyTorch twins.

    python python/count_flops.py MODELS_DIR [MODELS_DIR ...]

A multiply-add counts as two operations. Prints one JSON line per model.
"""

import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxr_models import load_classifier, load_segmenter  # noqa: E402


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for models_dir in sys.argv[1:]:
        for name, load in [("segmenter", load_segmenter), ("classifier", load_classifier)]:
            if not (Path(models_dir) / f"{name}.safetensors").exists():
                continue
            net, meta = load(models_dir)
            side = meta["input_side"]
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                net(torch.zeros(1, 1, side, side))
            print(json.dumps({
                "models": models_dir, "model": name, "input_side": side,
                "gflop": round(counter.get_total_flops() / 1e9, 3),
                "parameters": sum(p.numel() for p in net.parameters()),
            }))


if __name__ == "__main__":
    main()
