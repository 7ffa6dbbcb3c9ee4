"""Reads `cxr explain --raw` output back with numpy, independently of cxr, and checks it against
the JSON report: shapes, dtypes, the heatmap summary, LIME's weights and heatmap, the lung share.
Usage: check_raw.py REPORT.json; prints one JSON object of what it measured, exits 1 on a mismatch."""
import json
import os
import sys

import numpy as np

report_path = sys.argv[1]
report = json.load(open(report_path))
index = json.load(open(report["raw"]))
folder = os.path.dirname(report["raw"])
load = lambda name: np.load(os.path.join(folder, name), allow_pickle=False)
problems = []
measured = {}


def check(ok, what):
    if not ok:
        problems.append(what)


full = (report["height"], report["width"])
check((index["height"], index["width"]) == full, "index size")
check(index["sha256"] == report["sha256"], "index sha256")
mask = load(index["lung_mask"])
check(mask.dtype == np.uint8 and mask.shape == full, f"mask {mask.dtype} {mask.shape}")
check(set(np.unique(mask)) <= {0, 1}, "mask values")
check(abs(mask.mean() - report["lung_fraction"]) < 1e-4, "lung share")
measured["lung_fraction"] = float(mask.mean())

raw = {m["method"]: m for m in index["methods"]}
for explanation in report["explanations"]:
    method = explanation["method"]
    files = raw[method]
    check(files["target"] == explanation["target"], f"{method} target")
    grid = load(files["heatmap_grid"])
    side = index["grid"]
    check(grid.dtype == np.float32 and grid.shape == (side, side), f"{method} grid {grid.shape}")
    summary = explanation["heatmap"]
    ours = {"mean": float(grid.mean()), "max": float(grid.max()),
            "above_half": float((grid > 0.5).mean())}
    # cxr sums 50176 float32 values in order, numpy pairwise: the means differ near 1e-5.
    for key, value in ours.items():
        check(abs(value - summary[key]) < 1e-4, f"{method} {key}: {value} vs {summary[key]}")
    heat = load(files["heatmap"])
    check(heat.dtype == np.float32 and heat.shape == full, f"{method} heatmap {heat.shape}")
    check(heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6, f"{method} heatmap range")
    # The full-resolution map is the grid resampled: its hottest pixel lies in the hottest cell.
    crop = index["crop"]
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    u = int((x + 0.5 - crop["x0"]) * side / crop["side"])
    v = int((y + 0.5 - crop["y0"]) * side / crop["side"])
    check(grid[v, u] > 0.9 * heat.max(), f"{method} hottest pixel {x},{y} maps to a cool cell")
    check(heat.max() > 0.9, f"{method} full-resolution max {heat.max()}")
    measured[method] = {"grid": ours, "full_max": float(heat.max()), "full_shape": heat.shape}
    if "superpixels" in files:
        sp = files["superpixels"]
        labels = load(sp["segments_grid"])
        weights = load(sp["weights"])
        check(labels.dtype == np.int32 and labels.shape == (side, side), f"{method} labels")
        check(weights.dtype == np.float64, f"{method} weights dtype")
        check(weights.shape == (explanation["details"]["superpixels"],), f"{method} weights shape")
        check(np.allclose(weights, explanation["details"]["weights"]), f"{method} weights")
        # The heatmap is the positive weights painted on their superpixels, scaled to max 1.
        painted = np.maximum(weights[labels], 0)
        painted /= painted.max()
        check(np.abs(painted - grid).max() < 1e-5, f"{method} painted heatmap")
        full_labels = load(sp["segments"])
        check(full_labels.shape == full and full_labels.min() >= -1, f"{method} full labels")
        check(set(np.unique(full_labels)) - {-1} <= set(range(len(weights))), "label range")
        check(sp["selected"] and all(weights[s] > 0 for s in sp["selected"]), "selected > 0")
        measured[method]["superpixels"] = int(len(weights))

print(json.dumps(measured, default=list))
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
