#!/bin/sh
# Start Triton on the model repository ftprefix triton-repo wrote, mounted at /ftprefix/triton_models,
# with the conversion mounted at /ftprefix/mount: either its output directory (holding <tp>-gpu)
# or the <tp>-gpu directory itself. model_checkpoint_path in the repository is
# /ftprefix/model/<tp>-gpu, linked here to whichever was mounted.
# START_TRITON_ROOT (unset in the image) moves /ftprefix elsewhere, so the script runs outside it.
set -eu
root="${START_TRITON_ROOT:-}"
mkdir -p "$root/ftprefix/model"
if [ -f "$root/ftprefix/mount/config.ini" ]; then
    tp=$(sed -n 's/^tensor_para_size *= *//p' "$root/ftprefix/mount/config.ini")
    ln -sfn "$root/ftprefix/mount" "$root/ftprefix/model/${tp:-1}-gpu"
else
    for dir in "$root"/ftprefix/mount/*-gpu; do
        if [ -f "$dir/config.ini" ]; then
            ln -sfn "$dir" "$root/ftprefix/model/$(basename "$dir")"
        fi
    done
fi
# One line instead of the backend's failure deep in a model load: the conversion the repository
# names is not what was mounted (FTPREFIX_MODEL_DIR in the deployment's .env).
wanted=$(sed -n 's|^ *string_value: "/ftprefix/model/\([0-9]*-gpu\)"$|\1|p' \
    "$root/ftprefix/triton_models/fastertransformer/config.pbtxt")
if [ -n "$wanted" ] && [ ! -f "$root/ftprefix/model/$wanted/config.ini" ]; then
    echo "start-triton: error: the model repository serves a $wanted conversion, and the directory" \
        "mounted at /ftprefix/mount (FTPREFIX_MODEL_DIR in .env) holds none" >&2
    exit 1
fi
# Explicit model control: every model of the repository is loaded now, and one can be loaded again
# later (a changed task table) through POST /v2/repository/models/NAME/load.
set --
for config in "$root"/ftprefix/triton_models/*/config.pbtxt; do
    set -- "$@" "--load-model=$(basename "$(dirname "$config")")"
done
# Every config.pbtxt is complete as triton-repo wrote it. Auto-completion would add nothing: the
# FT backend only logs that it skips it for GPT-NeoX (fastertransformer_backend
# src/libfastertransformer.cc, ModelState::AutoCompleteConfig), and the python backend would start
# one more stub per text model only to ask it (python_backend src/python_be.cc, ModelState::Create).
exec tritonserver --model-repository=/ftprefix/triton_models --model-control-mode=explicit \
    --strict-readiness=true --disable-auto-complete-config "$@"
