#!/usr/bin/env bash
# A benchmark-only virtual environment with TensorFlow (CPU) for the homework's Keras ResNet18
# (benchmarks/keras/resnet18_keras.py), kept apart from the project's .venv: TensorFlow is never a
# test or package dependency of c100.
#
#     bash benchmarks/keras/setup.sh        # creates or checks .venv-keras at the repository root
#
# Idempotent: an existing .venv-keras that already has the pinned versions is left as it is.
set -euo pipefail

TF_VERSION=2.21.0     # tensorflow-cpu, pulls in keras 3
KERAS_VERSION=3.15.1   # the keras that resolved with it when this was written
NUMPY_VERSION=2.4.6   # the newest numpy when this was written (tensorflow-cpu asks for >=1.26)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv-keras"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

installed() {
    "$venv/bin/python" - "$TF_VERSION" "$KERAS_VERSION" "$NUMPY_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("tensorflow-cpu"), version("keras"), version("numpy")) == tuple(sys.argv[1:]) else 1)
PY
}

if installed; then
    echo "setup.sh: .venv-keras already has tensorflow-cpu $TF_VERSION, keras $KERAS_VERSION, numpy $NUMPY_VERSION" >&2
else
    "$venv/bin/python" -m pip install -q "tensorflow-cpu==$TF_VERSION" "keras==$KERAS_VERSION" "numpy==$NUMPY_VERSION"
fi

TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -c '
import platform, numpy, keras, tensorflow as tf
print(f"python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}, numpy {numpy.__version__}")
'
