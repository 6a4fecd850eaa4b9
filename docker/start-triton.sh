#!/bin/sh
# Start Triton on the model repository ftprefix triton-repo wrote, mounted at /ftprefix/triton_models,
# with the conversion mounted at /ftprefix/mount: either its output directory (holding <tp>-gpu)
# or the <tp>-gpu directory itself. model_checkpoint_path in the repository is
# /ftprefix/model/<tp>-gpu, linked here to whichever was mounted.
set -eu
mkdir -p /ftprefix/model
if [ -f /ftprefix/mount/config.ini ]; then
    tp=$(sed -n 's/^tensor_para_size *= *//p' /ftprefix/mount/config.ini)
    ln -sfn /ftprefix/mount "/ftprefix/model/${tp:-1}-gpu"
else
    for dir in /ftprefix/mount/*-gpu; do
        if [ -f "$dir/config.ini" ]; then
            ln -sfn "$dir" "/ftprefix/model/$(basename "$dir")"
        fi
    done
fi
# Explicit model control: every model of the repository is loaded now, and one can be loaded again
# later (a changed task table) through POST /v2/repository/models/NAME/load.
set --
for config in /ftprefix/triton_models/*/config.pbtxt; do
    set -- "$@" "--load-model=$(basename "$(dirname "$config")")"
done
exec tritonserver --model-repository=/ftprefix/triton_models --model-control-mode=explicit \
    --strict-readiness=true "$@"
