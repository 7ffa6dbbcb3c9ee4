#!/usr/bin/env bash
# Installs the Python reference explainers (pytorch-grad-cam, captum, lime) into .venv for
# python/compare_explainers.py, python/bench_reference.py and the python_reference test of
# cxr-explainers. Optional: cxr builds and tests without them (that test then skips).
# Idempotent: does nothing, quietly, when the pinned versions are already there. torch stays at
# the version tch needs; pip is never allowed to move it.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
REQUIREMENTS="$CXR_ROOT/python/requirements-reference.txt"

# Exit 0 when every `name==version` pin in the requirements file is installed at that version.
pins_satisfied() {
  "$VENV/bin/python" - "$REQUIREMENTS" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, wanted = line.partition("==")
    try:
        have = version(name.strip())
    except PackageNotFoundError:
        sys.exit(1)
    if have.split("+")[0] != wanted.strip():
        sys.exit(1)
PY
}

if ! pins_satisfied; then
  echo "cxr: installing the Python reference explainers into $VENV (first run only)" >&2
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  echo "torch==$TORCH_VERSION" >"$constraints"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$constraints" -r "$REQUIREMENTS"
  pins_satisfied || { echo "cxr: $REQUIREMENTS is still not satisfied after pip install" >&2; exit 1; }
fi
"$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
  || { echo "cxr: torch in $VENV is not $TORCH_VERSION" >&2; exit 1; }
"$VENV/bin/python" -c "import pytorch_grad_cam, captum, lime, skimage" \
  || { echo "cxr: the reference packages do not import" >&2; exit 1; }
