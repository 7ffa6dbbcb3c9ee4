#!/usr/bin/env bash
# Explainer speed side by side with the Python references, same model, same inputs, same
# machine, one command: the criterion benchmark of every explainer and of the classifier's own
# forward passes (the floor), then pytorch-grad-cam and the `lime` package on the same three
# preprocessed radiographs. Run it on an otherwise idle machine; it prints the medians and ratios.
source "$(dirname "${BASH_SOURCE[0]}")/setup-reference.sh"
cases="$(mktemp -d)/cases.safetensors"
CXR_REFERENCE_CASES="$cases" cargo test --release -q -p cxr-explainers --test python_reference >/dev/null
cargo bench -q -p cxr-benches --bench explainers >/dev/null
python="$CXR_ROOT/.venv/bin/python"
"$python" python/bench_reference.py models "$cases" > "${cases%.safetensors}.python.json"
"$python" - "${cases%.safetensors}.python.json" <<'PY'
import json, pathlib, sys
py = json.load(open(sys.argv[1]))
def median_ms(group, name):
    f = pathlib.Path("target/criterion") / group / name / "new/estimates.json"
    return json.load(open(f))["median"]["point_estimate"] / 1e6
forward = median_ms("floor", "forward_1")
thousand = median_ms("floor", "forward_1000_batched_100")
rows = [("forward (1 image)", forward, py["forward_ms"])]
print(f"{'':28}{'cxr ms':>10}{'python ms':>12}")
for name in sorted(p.name for p in pathlib.Path("target/criterion/explainer").iterdir() if p.is_dir() and p.name != "report"):
    ms = median_ms("explainer", name)
    ref = {"grad-cam": py["grad_cam_ms"], "lime": py["lime_1000_ms"]}.get(name)
    rows.append((name, ms, ref))
rows.append(("1000 forwards (batches of 100)", thousand, py.get("forward_1000_batched_ms")))
for name, ms, ref in rows:
    print(f"{name:28}{ms:10.1f}{(f'{ref:12.1f}' if ref else '           -')}")
gc, lime = median_ms("explainer", "grad-cam"), median_ms("explainer", "lime")
print(f"\ngrad-cam: {gc / forward:.2f}x one forward; pytorch-grad-cam / cxr = {py['grad_cam_ms'] / gc:.1f}x")
print(f"lime-1000: {lime / thousand:.2f}x its 1000 batched forwards; lime package / cxr = {py['lime_1000_ms'] / lime:.1f}x")
print(f"python: torch {py['torch']}, {py['threads']} threads, load {py.get('load_before')} -> {py.get('load_after')}")
PY
