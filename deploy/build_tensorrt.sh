#!/usr/bin/env bash
# Build the TensorRT engines of a trained model for THIS site's GPU and write a model artifact.
#
# TensorRT engines only run on the GPU model (and TensorRT version) they were built on, so this
# runs on the deployment host (or one with the same GPU), never on the training cluster.
#
# Usage: deploy/build_tensorrt.sh CHECKPOINT OUT_DIR [--model-id ID] [--evaluation JSON] [--overwrite] [--install]
#   CHECKPOINT   final.pt written by 'mnedge-train train'
#   OUT_DIR      artifact directory to write (ONNX + weights + TensorRT FP16/FP32 engines + card)
#   --install    also 'mnedge models install OUT_DIR --force' (then 'mnedge models use ID' to switch)
# Environment: MNEDGE_BIN  folder of the mnedge / mnedge-train scripts (default: found on PATH)
#              MNEDGE_HOME model store used by --install
set -euo pipefail

die() { echo "build_tensorrt.sh: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || die "usage: $0 CHECKPOINT OUT_DIR [--model-id ID] [--evaluation JSON] [--overwrite] [--install]"
checkpoint=$1 out=$2
shift 2
install=0
export_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --model-id|--evaluation) [[ $# -ge 2 ]] || die "$1 needs a value"; export_args+=("$1" "$2"); shift 2 ;;
        --overwrite) export_args+=("$1"); shift ;;
        --install) install=1; shift ;;
        *) die "unknown option $1" ;;
    esac
done
[[ -f $checkpoint ]] || die "no checkpoint $checkpoint (the final.pt of 'mnedge-train train')"

bin=${MNEDGE_BIN:-}
train_cmd=${bin:+$bin/}mnedge-train
mnedge_cmd=${bin:+$bin/}mnedge
command -v "$train_cmd" >/dev/null || die "$train_cmd not found; activate the mnedge environment or set MNEDGE_BIN"
python=$(dirname "$(command -v "$train_cmd")")/python
[[ -x $python ]] || python=python3

# Refuse clearly before any work when there is no usable CUDA GPU or no torch-tensorrt.
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    die "no CUDA GPU is usable here (torch.cuda.is_available() is False); TensorRT engines must be built on the site's GPU"
fi
if ! "$python" -c 'import tensorrt, torch_tensorrt, onnx' 2>/dev/null; then
    die "torch-tensorrt or onnx is not installed; pip install 'mnedge-live[tensorrt]' (or use deploy/containers/Dockerfile.cuda)"
fi
gpu=$("$python" -c 'import torch; print(torch.cuda.get_device_name(0))')
echo "building TensorRT engines on: $gpu"

"$train_cmd" export "$checkpoint" --out "$out" --tensorrt "${export_args[@]}"
if [[ $install -eq 1 ]]; then
    "$mnedge_cmd" models install "$out" --force
    store=${MNEDGE_HOME:-"the default store (~/.local/share/mnedge; set MNEDGE_HOME to the store of the service)"}
    echo "installed in $store; switch to it as the service user with: $mnedge_cmd models use <model id>  (see: $mnedge_cmd models list)"
fi
