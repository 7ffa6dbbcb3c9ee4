# Sourced by the other scripts: makes sure libtorch is present and points the build at it.
#
# libtorch comes from the PyPI `torch` wheel at exactly the version tch expects, installed into a
# project-local virtualenv (.venv). torch-sys finds it through LIBTORCH_USE_PYTORCH=1 and the venv's
# python; the crates' build scripts bake its lib folder into the binaries' rpath, so nothing needs
# LD_LIBRARY_PATH at run time.
set -euo pipefail
CXR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="2.13.0" # tch 0.26 is built against this release
VENV="$CXR_ROOT/.venv"

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "cxr: installing torch==$TORCH_VERSION into $VENV (first run only, about a minute)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy safetensors
fi

export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
cd "$CXR_ROOT"
