# Sourced by the other scripts: makes sure libtorch and ONNX Runtime are present and points the
# build at them.
#
# libtorch comes from the PyPI `torch` wheel at exactly the version tch expects, installed into a
# project-local virtualenv (.venv). torch-sys finds it through LIBTORCH_USE_PYTORCH=1 and the venv's
# python; the crates' build scripts bake its lib folder into the binaries' rpath, so nothing needs
# LD_LIBRARY_PATH at run time. ONNX Runtime's shared library comes from the PyPI `onnxruntime`
# wheel (with `onnx` to export models and Pillow for the Python side of the backend benchmark);
# CXR_ONNXRUNTIME names it for the build, which remembers it in the binaries.
set -euo pipefail
CXR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="2.13.0" # tch 0.26 is built against this release
ONNXRUNTIME_VERSION="1.31.1" # ort 2.0.0-rc.15 speaks its C API (version 31)
VENV="$CXR_ROOT/.venv"

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "cxr: installing torch==$TORCH_VERSION into $VENV (first run only, about a minute)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy safetensors
fi
if ! "$VENV/bin/python" -c "import onnxruntime, onnx, PIL, sys; sys.exit(onnxruntime.__version__ != '$ONNXRUNTIME_VERSION')" 2>/dev/null; then
  echo "cxr: installing onnxruntime==$ONNXRUNTIME_VERSION into $VENV (first run only)" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$ONNXRUNTIME_VERSION" onnx==1.23.2 pillow
fi
# jsonschema: the tests check real reports against docs/schema with it.
if ! "$VENV/bin/python" -c "import jsonschema" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check jsonschema==4.26.0
fi
CXR_ONNXRUNTIME="$(echo "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*)"
export CXR_ONNXRUNTIME

export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
cd "$CXR_ROOT"
