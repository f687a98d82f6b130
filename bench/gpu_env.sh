# Sourced by bench/gpu.sh and bench/gpu_train.sh: make the project importable on a machine that has Python and
# PyTorch but not the project's other dependencies (the GPU machine cannot reach a package index).
#
# Wheels in .whl/ (repo root, git-ignored; see the top of bench/gpu.sh for the `pip download` line that prepares
# them) are installed into $DWS_SITE (default /tmp/site), skipping packages already installed and never torch,
# triton or nvidia-* wheels; the repository goes on PYTHONPATH.
PY=${PYTHON:-python3}
SITE=${DWS_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
    mkdir -p "$SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    need=()
    for wheel in .whl/*.whl; do
        name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
        case "$name" in torch|triton|nvidia-*) continue ;; esac
        if ! "$PY" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$name" 2>/dev/null; then
            need+=("$wheel")
        fi
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${#need[@]} wheels from .whl/ into $SITE" >&2
        "$PY" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" "${need[@]}"
    fi
fi
if ! "$PY" -c 'import torch, numpy, diffusers, gymnasium, ale_py, safetensors, tyro' 2>/dev/null; then
    "$PY" -c 'import torch, numpy, diffusers, gymnasium, ale_py, safetensors, tyro' || true
    echo "missing Python packages: put their wheels in .whl/ (see the top of bench/gpu.sh) or pip install -e ." >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
